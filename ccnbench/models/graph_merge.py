"""Merge the branches of a user's own module by a graph pass: ``merge_branches(module, inputs)``.

Two rewrites, applied only where they compute what the module computes:

1. *Shared weights*: one submodule called on several inputs of the same shape becomes one call
   on the inputs folded into the batch, ``(B, k, ...) -> (B·k, ...)``, unfolded afterwards.
2. *Stacked weights*: several structurally identical sibling submodules (same class tree, same
   parameter and buffer shapes, same settings such as stride or eps, eval mode), each called
   once on inputs of the same shape, become one call of one branch whose weighted layers hold
   all k branches' weights (``torch.func.stack_module_state``): each Conv becomes one grouped
   Conv, each BatchNorm one BatchNorm over k·C channels, each Linear one batched MatMul.

Everything else in the user's ``forward`` stays as written, and every rewrite is run on the
example inputs against the module as written before it is accepted (a rewrite that does not
reproduce the module is dropped, with the reason).

Why torch.fx and not torch.export: both rules are statements about *submodule calls*, and
``torch.fx.Tracer`` with every submodule as a leaf gives exactly that: a graph of the user's
top-level ``forward`` whose nodes are calls of ``self.trunks.0``, ``self.head`` and the tensor
glue between them, and whose result is again an ``nn.Module`` (a ``GraphModule``) calling the
user's own submodules. Only that top-level forward has to be traceable, so a library trunk with
Python control flow inside is no obstacle. torch.export would lower the whole network to aten
operators, losing the module boundaries the rules are about, and would need every line of every
submodule to be exportable before anything could merge. Where a branch is a composite module
whose own children merge (a wrapper around the real branches), the pass descends into it.

Why not ``torch.vmap(functional_call)`` over the stacked weights, the textbook way to run an
ensemble: it computes the right numbers in eager mode, but in torch 2.13 the batching rules of
convolution, batch norm and pooling fix the batch size when traced, so ``torch.export`` (and
with it the ONNX export, whose batch must stay dynamic) fails or specialises the batch to the
example's. Folding the branches into the batch and grouping only the weighted layers needs no
batching rules, exports with a dynamic batch, and is what the hand-written merged layouts do.

The pass never raises for a module it cannot handle: it returns ``merged=False`` and a reason.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ccnbench.models.branch_modules import BatchFolded, StackedBranches, Unsupported, replace_submodule
from ccnbench.models.graph_candidates import Call, candidate_groups, parent_name, submodule_calls

_MAX_DEPTH = 3
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# A rewrite must reproduce the module on the example inputs to within this, relative to the
# output's magnitude: round-off passes, a wrong channel order or mixed samples do not.
_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
_DEFAULT_RTOL = 1e-2


@dataclass(frozen=True)
class MergedGroup:
    """One rewrite: which calls became one, how, and what it saves in convolutions."""

    rule: str  # "shared" (rule 1: fold into the batch) or "stacked" (rule 2: one call over stacked weights)
    targets: tuple[str, ...]  # qualified submodule names, one per original call
    module_class: str
    convs_each: int

    def describe(self) -> str:
        k = len(self.targets)
        if self.rule == "stacked":
            convs = f"{self.convs_each} Conv each → {self.convs_each} grouped Conv"
            return f"{k} × {self.module_class} ({', '.join(self.targets)}), {convs}"
        once = f"{self.convs_each} Conv run once" if self.convs_each else "run once"
        return (
            f"{k} calls of {self.module_class} ({self.targets[0]}, shared weights) → {once} on a {k}× batch"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "targets": list(self.targets),
            "module_class": self.module_class,
            "convs_each": self.convs_each,
            "description": self.describe(),
        }


@dataclass(frozen=True)
class MergeOutcome:
    """What ``merge_branches`` did.

    ``module`` is the rewritten module (a ``torch.fx.GraphModule``) or, when nothing merged, a
    copy of the original; it never shares tensors with the module passed in. ``reason`` says
    why nothing merged, or why a candidate stayed kept when something else merged.
    """

    module: nn.Module
    merged: bool
    groups: tuple[MergedGroup, ...] = ()
    reason: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def description(self) -> str:
        """One line per merged group, e.g. '2 × ResNet (trunks.0, trunks.1), 12 Conv each → 12 grouped Conv'."""
        return "\n".join(g.describe() for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "merged": self.merged,
            "description": self.description,
            "groups": [g.to_dict() for g in self.groups],
            "reason": self.reason,
        }


def merge_branches(module: nn.Module, example_inputs: Sequence[Tensor]) -> MergeOutcome:
    """Merge the parallel branches of ``module`` (see the module docstring for the two rules).

    ``example_inputs`` are tensors ``module`` accepts (one per positional argument of its
    forward); they fix the shapes that decide which calls may merge, and every rewrite is checked
    on them. Use the module in eval mode: BatchNorm and Dropout in training mode do not commute
    with folding branches, so a training-mode branch stays kept.
    """
    inputs = tuple(example_inputs)
    try:
        work = copy.deepcopy(module)
    except Exception as exc:
        return MergeOutcome(module, False, reason=f"cannot copy the module: {_first_line(exc)}")
    try:
        rewritten, groups, notes = _merge_in(work, inputs, prefix="", depth=0)
    except _Untraceable as exc:
        return MergeOutcome(work, False, reason=str(exc))
    except Exception as exc:  # the pass must never take the user's run down with it
        return MergeOutcome(work, False, reason=f"graph merge failed: {_first_line(exc)}")
    if not groups:
        reason = "; ".join(notes) if notes else "no parallel branches found"
        return MergeOutcome(work, False, reason=f"nothing to merge: {reason}")
    return MergeOutcome(rewritten, True, tuple(groups), "; ".join(notes) or None, tuple(notes))


# --- tracing -------------------------------------------------------------------------------------


class _Untraceable(Exception):
    """The module's forward cannot be traced; the message is the user-facing reason."""


class _LeafTracer(fx.Tracer):
    """Traces only the root's own forward: every submodule call is one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _trace(module: nn.Module, num_inputs: int) -> fx.GraphModule:
    name = type(module).__name__
    params = list(inspect.signature(module.forward).parameters.values())
    variadic = [p for p in params if p.kind is p.VAR_POSITIONAL]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    concrete: tuple[Any, ...] | None = None
    if variadic and not positional:
        # forward(*inputs): fx makes one placeholder per input only when told how many there are.
        concrete = tuple(fx.PH for _ in range(num_inputs))
    elif variadic or len(positional) < num_inputs:
        raise _Untraceable(f"cannot trace {name}.forward: its signature mixes named and *variadic inputs")
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(module, concrete_args=concrete)  # type: ignore[arg-type]
    except Exception as exc:
        raise _Untraceable(f"cannot trace {name}.forward with torch.fx: {_first_line(exc)}") from exc
    return fx.GraphModule(tracer.root, graph, name)


def _record(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> dict[fx.Node, Any]:
    """The value of every node on ``inputs`` (shapes, and the inputs of calls to descend into)."""
    values: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = result = super().run_node(n)
            return result

    with torch.no_grad():
        _Recorder(gm).run(*inputs)
    return values


# --- rewriting -----------------------------------------------------------------------------------


def _merge_in(
    module: nn.Module, inputs: tuple[Tensor, ...], prefix: str, depth: int
) -> tuple[nn.Module, list[MergedGroup], list[str]]:
    """Merge inside ``module``; returns the module to use, the groups merged and notes."""
    gm = _trace(module, len(inputs))
    values = _record(gm, inputs)
    reference = values[next(n for n in gm.graph.nodes if n.op == "output")]
    calls, notes = submodule_calls(gm, values)
    candidates, more = candidate_groups(calls)
    notes += more
    accepted: list[tuple[str, list[Call]]] = []
    for rule, group in candidates:
        try:
            trial = _rewrite(module, len(inputs), [*accepted, (rule, group)])
        except Unsupported as exc:
            notes.append(f"{', '.join(c.target for c in group)} stayed kept: {exc}")
            continue
        problem = _disagreement(trial, inputs, reference)
        if problem is None:
            accepted.append((rule, group))
        else:
            notes.append(f"{', '.join(c.target for c in group)} stayed kept: {problem}")
    groups = [_describe(rule, group, prefix) for rule, group in accepted]
    result: nn.Module = _rewrite(module, len(inputs), accepted) if accepted else module
    if depth < _MAX_DEPTH:
        merged_targets = {c.target for _, group in accepted for c in group}
        descended = _descend(gm, values, merged_targets, prefix, depth)
        for target, inner, inner_groups, inner_notes in descended:
            notes += inner_notes
            if inner_groups:
                replace_submodule(result, target, inner)
                groups += inner_groups
    return result, groups, notes


def _descend(
    gm: fx.GraphModule, values: dict[fx.Node, Any], merged: set[str], prefix: str, depth: int
) -> list[tuple[str, nn.Module, list[MergedGroup], list[str]]]:
    """Merge inside composite submodules called once that no rewrite here took in."""
    counts: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] += 1
    found = []
    for node in gm.graph.nodes:
        target = str(node.target)
        if node.op != "call_module" or target in merged or counts[target] != 1 or node.kwargs:
            continue
        child = gm.get_submodule(target)
        if len(list(child.children())) < 2:
            continue
        args = [values.get(a) if isinstance(a, fx.Node) else a for a in node.args]
        if not args or not all(isinstance(a, Tensor) for a in args):
            continue
        try:
            inner, inner_groups, inner_notes = _merge_in(child, tuple(args), f"{prefix}{target}.", depth + 1)
        except Exception:
            continue  # an untraceable or unusual child simply stays as written
        found.append((target, inner, inner_groups, [f"in {prefix}{target}: {note}" for note in inner_notes]))
    return found


def _rewrite(module: nn.Module, num_inputs: int, groups: list[tuple[str, list[Call]]]) -> fx.GraphModule:
    """A fresh trace of ``module`` with each group's calls replaced by one merged call."""
    gm = _trace(module, num_inputs)
    by_name = {n.name: n for n in gm.graph.nodes}
    for index, (rule, group) in enumerate(groups):
        nodes = [by_name[c.node.name] for c in group]
        target = _new_name(gm, group, rule, index)
        first = group[0].module
        merged = (
            BatchFolded(first, len(group)) if rule == "shared" else StackedBranches([c.module for c in group])
        )
        # Which calls it replaced, for models.correspondence (explain's kept-vs-merged rows).
        merged.merged_from = tuple(c.target for c in group)
        gm.add_submodule(target, merged)
        # Insert where every input exists (just before the last call); uses are re-ordered below.
        with gm.graph.inserting_before(nodes[-1]):
            call = gm.graph.call_module(target, tuple(n.args[0] for n in nodes))
            for i, node in enumerate(nodes):
                part = gm.graph.call_function(operator.getitem, (call, i))
                node.replace_all_uses_with(part)
        for node in nodes:
            gm.graph.erase_node(node)
    _topological_order(gm.graph)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _new_name(gm: fx.GraphModule, group: list[Call], rule: str, index: int) -> str:
    common = parent_name(group[0].target) if rule == "stacked" else group[0].target
    base = (common.replace(".", "_") or "branches") + ("_stacked" if rule == "stacked" else "_folded")
    name = base
    for n in itertools.count(1):
        if not hasattr(gm, name):
            return name
        name = f"{base}_{n}"
    raise AssertionError("unreachable")


def _topological_order(graph: fx.Graph) -> None:
    """Move nodes so every node follows its inputs, keeping the written order otherwise.

    A merged call sits where its last input exists, which can be after a use of an earlier
    branch's output in the user's order; this moves such uses (and nothing else) later.
    """
    order: list[fx.Node] = []
    placed: set[fx.Node] = set()

    def place(node: fx.Node) -> None:
        stack = [(node, False)]
        while stack:
            n, expanded = stack.pop()
            if n in placed:
                continue
            if expanded:
                placed.add(n)
                order.append(n)
                continue
            stack.append((n, True))
            stack.extend((i, False) for i in reversed(n.all_input_nodes) if i not in placed)

    for node in list(graph.nodes):
        place(node)
    anchor = order[0]
    for node in order[1:]:
        anchor.append(node)
        anchor = node


def _disagreement(gm: nn.Module, inputs: tuple[Tensor, ...], reference: Any) -> str | None:
    """None when ``gm`` reproduces ``reference`` on ``inputs``, else what went wrong."""
    try:
        with torch.no_grad():
            got = gm(*inputs)
    except Exception as exc:
        return f"the merged call does not run ({_first_line(exc)})"
    ref_leaves, ref_spec = pytree.tree_flatten(reference)
    got_leaves, got_spec = pytree.tree_flatten(got)
    if ref_spec != got_spec:
        return "the merged call changes the output structure"
    for ref, out in zip(ref_leaves, got_leaves):
        if not isinstance(ref, Tensor):
            continue
        if not isinstance(out, Tensor) or out.shape != ref.shape:
            return "the merged call changes an output's shape"
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        error = float((out.double() - ref.double()).abs().max()) if ref.numel() else 0.0
        if not error <= _CHECK_RTOL.get(ref.dtype, _DEFAULT_RTOL) * scale:
            return f"the merged call differs from the module by {error:.2g} on the example inputs"
    return None


def _describe(rule: str, group: list[Call], prefix: str) -> MergedGroup:
    module = group[0].module
    convs = sum(isinstance(m, _CONV_TYPES) for m in module.modules())
    return MergedGroup(rule, tuple(prefix + c.target for c in group), type(module).__name__, convs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
