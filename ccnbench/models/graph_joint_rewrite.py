"""Writing a ``graph_joint.JointPlan`` into the traced caller of the branches it merges in part.

The k branch calls become the branches' own steps, inline: merged children as one call of a
``PackedStack`` (form ``channels``), a ``FoldedStack`` (``batch``) or a ``StackedBranches``
(``per-child``), shared layers on the folded values as a ``FoldedCall``, everything else per
branch under the branch's own names (``trunks.0.conv1`` stays ``trunks.0.conv1``). Each merged
module records the calls it replaced (``merged_from``), which ``models.correspondence`` reads.
Values move between folded and per branch only where a step needs the other: in channels
``torch.cat(..., dim=1)`` folds and ``chunk(k, dim=1)`` splits; in the batch
``torch.stack(..., dim=1).flatten(0, 1)`` folds (sample-major, as ``StackedBranches`` does) and
``unflatten(0, (-1, k)).unbind(1)`` splits; all keep the batch dynamic.
"""

from __future__ import annotations

import copy
import itertools
import operator
from typing import Any

import torch
from torch import Tensor, fx, nn

from ccnbench.models.branch_modules import FoldedCall, FoldedStack, replace_submodule
from ccnbench.models.graph_joint import JointPlan, Step, stacked_name


def write_joint(gm: fx.GraphModule, plan: JointPlan, nodes: list[fx.Node]) -> list[fx.Node]:
    """Insert ``plan``'s steps where the graph's insertion point is; ``nodes`` are the k branch
    calls in ``gm``. Returns each branch's result node (the caller redirects the calls' uses)."""
    return _Writer(gm, plan, nodes).write()


class _Writer:
    def __init__(self, gm: fx.GraphModule, plan: JointPlan, nodes: list[fx.Node]) -> None:
        self.gm, self.plan, self.graph = gm, plan, gm.graph
        self.k = len(nodes)
        self.inputs = [n.args[0] for n in nodes]
        self.per_branch: dict[int, list[Any]] = {}
        self.folded: dict[int, Any] = {}
        self.modules: dict[tuple[str, str], str] = {}
        self.position = [{s.nodes[i]: j for j, s in enumerate(plan.steps)} for i in range(self.k)]
        # The branches' own modules move into fresh containers under the same names, holding only
        # what runs per branch: the user's module objects are never edited.
        self.containers = []
        for call in plan.calls:
            container = nn.Module()
            replace_submodule(gm, call.target, container)
            self.containers.append(container)
        self.made = {id(c) for c in self.containers}  # containers made here, not the user's modules

    def write(self) -> list[fx.Node]:
        results: list[fx.Node] = []
        for j, step in enumerate(self.plan.steps):
            if step.how == "input":
                self.per_branch[j] = list(self.inputs)
            elif step.how == "output":
                results = self.split(step.inputs[0])
            elif j in self.plan.folded:
                self.folded[j] = self.once(step)
            elif step.how == "merged":  # per child: it folds and splits itself
                args = tuple(self.split(step.inputs[0]))
                call = self.graph.call_module(self.merged_module(step, folded=False), args)
                self.per_branch[j] = [
                    self.graph.call_function(operator.getitem, (call, i)) for i in range(self.k)
                ]
            else:
                self.per_branch[j] = [self.branch_node(step, i) for i in range(self.k)]
        return results

    # --- the two forms of a value ---------------------------------------------------------------

    def split(self, j: int) -> list[Any]:
        if j not in self.per_branch:
            if self.plan.form == "channels":
                parts = self.graph.call_method("chunk", (self.folded[j], self.k, 1))
            else:
                unflat = self.graph.call_method("unflatten", (self.folded[j], 0, (-1, self.k)))
                parts = self.graph.call_method("unbind", (unflat, 1))
            self.per_branch[j] = [
                self.graph.call_function(operator.getitem, (parts, i)) for i in range(self.k)
            ]
        return self.per_branch[j]

    def fold(self, j: int) -> Any:
        if j not in self.folded:
            values = list(self.per_branch[j])
            if self.plan.form == "channels":
                self.folded[j] = self.graph.call_function(torch.cat, (values,), {"dim": 1})
            else:
                stacked = self.graph.call_function(torch.stack, (values,), {"dim": 1})
                self.folded[j] = self.graph.call_method("flatten", (stacked, 0, 1))
        return self.folded[j]

    # --- steps ---------------------------------------------------------------------------------

    def once(self, step: Step) -> fx.Node:
        """A step run once on the folded batch (its inputs folded)."""
        node = step.nodes[0]
        args = fx.node.map_arg(node.args, lambda n: self.fold(self.position[0][n]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.fold(self.position[0][n]))
        if step.how == "merged":
            return self.graph.call_module(self.merged_module(step, folded=True), args)
        if step.how == "shared":
            return self.graph.call_module(self.shared_module(step), args, kwargs)
        return self.graph.create_node(node.op, node.target, args, kwargs)

    def branch_node(self, step: Step, i: int) -> fx.Node:
        """Branch ``i``'s own node: its module or attribute, under its own name."""
        node = step.nodes[i]
        args = fx.node.map_arg(node.args, lambda n: self.split(self.position[i][n])[i])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.split(self.position[i][n])[i])
        target: Any = node.target
        if node.op in ("call_module", "get_attr"):
            target = self.own(i, str(node.target))
        return self.graph.create_node(node.op, target, args, kwargs)

    def own(self, i: int, target: str) -> str:
        """Branch ``i``'s ``target`` copied (by reference) into its container; its name in ``gm``."""
        source: Any = self.plan.calls[i].module
        into: Any = self.containers[i]
        *path, name = target.split(".")
        for part in path:
            source = getattr(source, part)
            if not hasattr(into, part):
                made = nn.Module()
                self.made.add(id(made))
                setattr(into, part, made)
            into = getattr(into, part)
            if id(into) not in self.made:
                return f"{self.plan.calls[i].target}.{target}"  # a whole module above it is there
        value = getattr(source, name)
        if isinstance(value, Tensor) and not isinstance(value, nn.Parameter):
            into.register_buffer(name, value)
        elif not hasattr(into, name) or id(getattr(into, name)) in self.made:
            # The whole module (it holds whatever a container made for part of it held).
            setattr(into, name, value)
        return f"{self.plan.calls[i].target}.{target}"

    def merged_module(self, step: Step, folded: bool) -> str:
        form = self.plan.form if folded else "per-child"
        key = (form, str(step.nodes[0].target))
        if key not in self.modules:
            assert step.stacked is not None
            module: nn.Module = step.stacked
            if form == "channels":
                assert step.packed is not None
                module = step.packed
            elif form == "batch":
                module = FoldedStack.of(step.stacked)
            self.modules[key] = self.add(module, step, "stacked")
        return self.modules[key]

    def shared_module(self, step: Step) -> str:
        key = ("shared", str(step.nodes[0].target))
        if key not in self.modules:
            first = self.plan.calls[0].module.get_submodule(str(step.nodes[0].target))
            self.modules[key] = self.add(FoldedCall(copy.deepcopy(first), self.k), step, "folded")
        return self.modules[key]

    def add(self, module: nn.Module, step: Step, kind: str) -> str:
        # Which calls it replaced, for models.correspondence (explain's kept-vs-merged rows).
        module.merged_from = tuple(f"{c.target}.{n.target}" for c, n in zip(self.plan.calls, step.nodes))
        base = f"{stacked_name(self.plan.calls, str(step.nodes[0].target))}_{kind}"
        name = next(
            n
            for n in itertools.chain([base], (f"{base}_{i}" for i in itertools.count(1)))
            if not hasattr(self.gm, n)
        )
        self.gm.add_submodule(name, module)
        return name
