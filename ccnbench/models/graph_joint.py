"""Joint descent into sibling branches that differ: merge the layers that are the same.

Two-stream networks rarely have identical streams (an RGB and an optical-flow stream differ in
input channels, MRI branches in their stem), so ``graph_merge``'s stacked rule, which needs whole
branches identical, merges nothing of them. ``plan_joint`` traces each branch's own ``forward``
(every submodule one call) and, where the k graphs match op for op and only the modules differ,
decides per call:

- **merged**: the k modules have the same structure and settings, weights to stack and inputs of
  one shape: one ``StackedBranches`` call, each Conv a grouped Conv (``branch_modules``);
- **shared**: a layer without weights with the same settings in every branch (activation,
  pooling): one call, like the tensor code between calls (``glue``: adds, views, ``size``);
- **own**: everything else runs per branch, as written (the differing stem, a layer whose
  input shapes differ).

and where each value lives: *folded* (the k branches' values as one tensor) or per branch. The
plan's ``form`` says how values are folded:

- ``channels``: side by side in channels, ``(B, k·C, ...)``, each merged Conv and BatchNorm run
  on them as they are (``PackedStack``), so a run of merged children has no reshape inside;
- ``batch``: into the batch, ``(B·k, ...)``, viewed as ``(B, k·C, ...)`` around each layer with
  weights (``FoldedStack``, the stacked rule's form);
- ``per-child``: every merged child folds its inputs into the batch and splits its output
  itself (``StackedBranches``), and everything between runs per branch.

In the first two, shared layers and glue run once on folded values when their input is folded,
so a run of merged children is folded once and split once. ``graph_joint_rewrite`` writes the
plan into the graph; ``graph_merge`` keeps it only if the module still computes what it did on
the example inputs, trying the forms in that order.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ccnbench.models.branch_modules import PackedStack, StackedBranches, Unsupported
from ccnbench.models.graph_candidates import (
    Call,
    all_tensors,
    module_difference,
    parent_name,
    shape_text,
    short_difference,
    signature,
)
from ccnbench.models.graph_trace import Untraceable, record, trace

FORMS = ("channels", "batch", "per-child")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Step:
    """One node of the branches' common forward: that node in each branch's trace, and how it runs."""

    nodes: tuple[fx.Node, ...]
    how: str  # input, output, merged, shared, glue or own (see the module docstring)
    why: str = ""  # an own module call: why it runs per branch
    stacked: StackedBranches | None = None  # a merged call: the k modules stacked
    packed: PackedStack | None = None  # and in the channels form
    dims: int = 0  # dimensions of its value, when it is one tensor of one shape in every branch
    differs: bool = False  # an own module call whose modules differ in structure or settings
    weighted: bool = False  # a module call with weights (what merging is about)
    inputs: tuple[int, ...] = ()  # the steps whose values it reads


@dataclass
class JointPlan:
    """How k sibling branches run partly merged: ``steps`` in graph order, ``folded`` the steps
    that run once on the folded values (the others run per branch), in ``form``."""

    calls: list[Call]
    steps: list[Step]
    form: str = "per-child"
    folded: set[int] = field(default_factory=set)
    convertible: set[int] = field(default_factory=set)  # values that may be folded or split

    def in_form(self, form: str) -> JointPlan | None:
        """This plan with its values folded in ``form`` (``FORMS``), or None where it has none."""
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        if form == "per-child":
            return replace(self, form=form, folded=set())
        steps = self.steps
        if form == "channels":
            try:  # every merged child needs its packed form
                steps = [replace(s, packed=PackedStack.of(s.stacked)) if s.stacked else s for s in steps]
            except Unsupported:
                return None
        plan = replace(self, steps=steps, form=form)
        plan.folded = _folded(plan)
        return plan

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(c.target for c in self.calls)

    def children(self, how: str) -> list[str]:
        """Branch 0's names of the calls that run ``how`` (merged, own), each once, in order."""
        names = [
            str(s.nodes[0].target) for s in self.steps if s.how == how and s.nodes[0].op == "call_module"
        ]
        return list(dict.fromkeys(names))

    def kept(self) -> list[tuple[str, str]]:
        """(child, why) for each module call that runs per branch."""
        seen: dict[str, str] = {}
        for s in self.steps:
            if s.how == "own" and s.nodes[0].op == "call_module" and (s.weighted or s.differs):
                seen.setdefault(str(s.nodes[0].target), s.why)
        return list(seen.items())

    def conv_counts(self) -> tuple[int, int]:
        """(Conv in each branch, Conv in its merged children)."""
        branch = self.calls[0].module
        total = sum(isinstance(m, _CONV_TYPES) for m in branch.modules())
        merged = sum(
            isinstance(m, _CONV_TYPES)
            for name in self.children("merged")
            for m in branch.get_submodule(name).modules()
        )
        return total, merged

    def saving(self) -> int:
        """Layers with weights the merge removes: (k - 1) per layer in the merged children."""
        branch = self.calls[0].module
        layers = sum(weighted_layers(branch.get_submodule(name)) for name in self.children("merged"))
        return (len(self.calls) - 1) * layers


def weighted_layers(module: nn.Module) -> int:
    """How many layers with their own weights ``module`` holds (Conv, BatchNorm, Linear...)."""
    return sum(
        1
        for m in module.modules()
        if any(True for _ in itertools.chain(m._parameters.values(), m._buffers.values()))
    )


def plan_joint(calls: list[Call], values: dict[fx.Node, Any]) -> JointPlan | str:
    """The plan for running ``calls`` (sibling branches of one class) partly merged, per child
    (``JointPlan.in_form`` folds it once), or why nothing of them can merge. ``values`` holds the
    traced caller's node values."""
    traces, recorded = [], []
    for call in calls:
        try:
            gm = trace(call.module, 1)
            recorded.append(record(gm, (values[call.arg].clone(),)))  # a forward may write its input
        except Untraceable as exc:
            return str(exc)
        except Exception as exc:  # a branch that cannot run alone on its recorded input
            return f"cannot run {call.target} alone: {type(exc).__name__}"
        traces.append(gm)
    steps = _align(calls, traces)
    if isinstance(steps, str):
        return steps
    convertible = _classify(calls, traces, recorded, steps)
    if isinstance(convertible, str):
        return convertible
    if not any(s.how == "merged" for s in steps):
        return _why_nothing(calls, traces, steps)
    return JointPlan(calls, steps, convertible=convertible)


# --- aligning the branches' graphs ----------------------------------------------------------------


def _align(calls: list[Call], traces: list[fx.GraphModule]) -> list[Step] | str:
    """One step per node when the k graphs are the same op for op (modules and attributes may
    differ, nothing else), else why not."""
    graphs = [list(gm.graph.nodes) for gm in traces]
    first = graphs[0]
    index = [{n: j for j, n in enumerate(g)} for g in graphs]
    steps = []
    for j, node in enumerate(first):
        for call, graph, where in zip(calls[1:], graphs[1:], index[1:]):
            other = graph[j] if j < len(graph) else None
            if other is None or not _same_op(node, index[0], other, where):
                what = _op_text(other) if other is not None else "nothing"
                return (
                    f"branches differ: {call.target}.forward runs {what} where "
                    f"{calls[0].target}.forward runs {_op_text(node)}"
                )
        inputs = tuple(index[0][n] for n in node.all_input_nodes)
        steps.append(Step(tuple(g[j] for g in graphs), "", inputs=inputs))
    if any(len(g) != len(first) for g in graphs):
        return f"branches differ: the forwards of {', '.join(c.target for c in calls)} have different lengths"
    return steps


def _same_op(a: fx.Node, where_a: dict[fx.Node, int], b: fx.Node, where_b: dict[fx.Node, int]) -> bool:
    if a.op != b.op:
        return False
    if a.op in ("call_function", "call_method") and a.target != b.target:
        return False
    try:
        return bool(_shape_of(a.args, where_a) == _shape_of(b.args, where_b)) and bool(
            _shape_of(a.kwargs, where_a) == _shape_of(b.kwargs, where_b)
        )
    except Exception:  # a constant that does not compare as a bool (a tensor)
        return False


def _shape_of(args: Any, where: dict[fx.Node, int]) -> Any:
    """``args`` with each node replaced by its position: comparable across graphs."""
    return fx.node.map_aggregate(args, lambda a: ("node", where[a]) if isinstance(a, fx.Node) else a)


def _op_text(node: fx.Node) -> str:
    if node.op in ("call_module", "get_attr"):
        return f"{node.op} {node.target}"
    if node.op in ("call_function", "call_method"):
        return getattr(node.target, "__name__", str(node.target))
    return node.op


# --- what runs merged -----------------------------------------------------------------------------


def _classify(
    calls: list[Call], traces: list[fx.GraphModule], recorded: list[dict[fx.Node, Any]], steps: list[Step]
) -> set[int] | str:
    """Set each step's ``how``; returns the steps whose values may be folded or split: tensors of
    one shape in every branch computed from the branch's input (a weight read in the forward has
    no batch to fold)."""
    convertible = set()
    batched: set[int] = set()
    for j, step in enumerate(steps):
        node = step.nodes[0]
        results = [rec.get(n) for rec, n in zip(recorded, step.nodes)]
        if node.op == "placeholder" or any(i in batched for i in step.inputs):
            batched.add(j)
        if j in batched and _same_tensor_shape(results):
            convertible.add(j)
            step.dims = results[0].dim()
        if node.op == "placeholder":
            if j > 0:
                return f"{calls[0].target}.forward takes more than one input: its branches merge whole or not at all"
            step.how = "input"
        elif node.op == "output":
            if len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
                return f"{', '.join(c.target for c in calls)} return several values: they merge whole or not at all"
            step.how = "output"
        elif node.op == "get_attr":
            step.how = "own"
        elif node.op == "call_module":
            modules = [gm.get_submodule(str(n.target)) for gm, n in zip(traces, step.nodes)]
            _classify_module(step, modules, recorded, results)
        else:
            step.how = "glue" if _alike(results) else "own"
    return convertible


def _classify_module(
    step: Step, modules: list[nn.Module], recorded: list[dict[fx.Node, Any]], results: list[Any]
) -> None:
    first = modules[0]
    step.weighted = any(True for m in modules for _ in _own_tensors(m))
    if any(signature(m) != signature(first) for m in modules[1:]):
        step.how, step.why, step.differs = "own", short_difference(modules), True
        return
    step.weighted = any(True for _ in _own_tensors(first))
    if not step.weighted:
        step.how = "shared" if _alike(results) else "own"  # no weights: per branch is no loss
        return
    node = step.nodes[0]
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        step.how, step.why = "own", "called with several arguments"
        return
    arguments = [rec.get(n.args[0]) for rec, n in zip(recorded, step.nodes)]
    if not _same_tensor_shape(arguments) or not all(all_tensors(r) for r in results) or not _alike(results):
        step.how, step.why = "own", "inputs " + _shapes_text(step, recorded)
        return
    try:
        step.stacked = StackedBranches(modules)
    except Unsupported as exc:
        step.how, step.why = "own", str(exc)
        return
    step.how = "merged"


def _own_tensors(module: nn.Module) -> Any:
    yield from module.parameters()
    yield from module.buffers()


def _same_tensor_shape(values: list[Any]) -> bool:
    """Tensors of one shape and dtype (at least one dimension): they fold into one batch."""
    first = values[0]
    return all(
        isinstance(v, Tensor) and v.dim() > 0 and v.shape == first.shape and v.dtype == first.dtype
        for v in values
    )


def _alike(values: list[Any]) -> bool:
    """The k branches' values of one node have one structure, tensors of one shape and equal
    other values (a size): the node may run once on the folded batch."""
    leaves, specs = zip(*(pytree.tree_flatten(v) for v in values))
    if any(s != specs[0] for s in specs[1:]):
        return False
    for column in zip(*leaves):
        if isinstance(column[0], Tensor):
            if not _same_tensor_shape(list(column)):
                return False
        else:
            try:
                if any(bool(v != column[0]) for v in column[1:]):
                    return False
            except Exception:
                return False
    return True


def _shapes_text(step: Step, recorded: list[dict[fx.Node, Any]]) -> str:
    texts = []
    for rec, n in zip(recorded, step.nodes):
        x = rec.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
        texts.append(shape_text(x.shape[1:]) if isinstance(x, Tensor) else "?")
    return " vs ".join(texts)


def _why_nothing(calls: list[Call], traces: list[fx.GraphModule], steps: list[Step]) -> str:
    """Nothing merges: the first difference, and when it changes every later shape, that."""
    own = [
        s for s in steps if s.how == "own" and s.nodes[0].op == "call_module" and (s.weighted or s.differs)
    ]
    differing = next((s for s in own if s.differs), None)
    reshaped = next((s for s in own if s.why.startswith("inputs ")), None)
    if differing is None:
        other = next((s for s in own if not s.why.startswith("inputs ")), None)
        if other is not None:
            names = ", ".join(f"{c.target}.{n.target}" for c, n in zip(calls, other.nodes))
            return f"{names} stay per branch: {other.why}"
        other_input = next((c for c in calls if c.input_key != calls[0].input_key), None)
        if other_input is not None:  # the branches' own inputs differ: every shape after them may
            a, b = calls[0], other_input
            return f"inputs differ: {b.target} gets {shape_text(b.input_key[0])}, {a.target} {shape_text(a.input_key[0])}"
        if reshaped is not None:
            return f"inputs differ: {_named(calls, reshaped)}"
        return f"{', '.join(c.target for c in calls)} have no layer with weights alike"
    modules = [gm.get_submodule(str(n.target)) for gm, n in zip(traces, differing.nodes)]
    index = next(i for i, m in enumerate(modules) if signature(m) != signature(modules[0]))
    a_name = f"{calls[0].target}.{differing.nodes[0].target}"
    b_name = f"{calls[index].target}.{differing.nodes[index].target}"
    text = module_difference(a_name, modules[0], b_name, modules[index])
    if reshaped is not None and steps.index(reshaped) > steps.index(differing):
        text += f", which changes the shapes after it ({_named(calls, reshaped)}): nothing merges"
    return text


def _named(calls: list[Call], step: Step) -> str:
    """``bn1 gets 64×32×32×32 in trunks.0, 64×16×16×16 in trunks.1``: a call's inputs per branch."""
    shapes = step.why.removeprefix("inputs ").split(" vs ")
    where = ", ".join(f"{shape} in {c.target}" for shape, c in zip(shapes, calls))
    return f"{step.nodes[0].target} gets {where}"


# --- where values live: folded or per branch --------------------------------------------------------


def _folded(plan: JointPlan) -> set[int]:
    """Fold once: merged calls run folded, shared layers and glue too when an input is folded and
    the others can be; a value that cannot be split (a size, a tuple; in channels, a tensor
    without them) stays where its readers are."""
    steps = plan.steps
    convertible = {j for j in plan.convertible if plan.form != "channels" or steps[j].dims >= 2}
    forced: set[int] = set()  # steps that must run per branch
    while True:
        folded: set[int] = set()
        for j, step in enumerate(steps):
            if j in forced:
                continue
            if step.how == "merged":
                folded.add(j)
            elif step.how in ("shared", "glue") and step.inputs:
                ins = step.inputs
                if any(i in folded for i in ins) and all(i in folded or i in convertible for i in ins):
                    folded.add(j)
        more = set()
        for j, step in enumerate(steps):
            if j in folded:
                continue  # a folded step's unfoldable inputs are folded (the rule above)
            more.update(i for i in step.inputs if i in folded and i not in convertible)
        if more <= forced:
            return folded
        forced |= more


def compact(names: list[str]) -> str:
    """``layer1, layer2, layer3, layer4`` -> ``layer1–layer4``: runs of numbered names shortened."""
    parts: list[str] = []
    run: list[tuple[str, int, str]] = []

    def flush() -> None:
        if len(run) > 2:
            parts.append(f"{run[0][2]}–{run[-1][2]}")
        else:
            parts.extend(name for _, _, name in run)
        run.clear()

    for name in names:
        match = re.fullmatch(r"(.*?)(\d+)", name)
        if match and run and run[-1][0] == match[1] and run[-1][1] + 1 == int(match[2]):
            run.append((match[1], int(match[2]), name))
            continue
        flush()
        if match:
            run.append((match[1], int(match[2]), name))
        else:
            parts.append(name)
    flush()
    return ", ".join(parts)


def stacked_name(calls: list[Call], child: str) -> str:
    """A readable attribute name for a merged child: ``trunks_layer1``."""
    base = (
        parent_name(calls[0].target)
        if all(parent_name(c.target) == parent_name(calls[0].target) for c in calls)
        else ""
    )
    return "_".join(p for p in (base.replace(".", "_") or "branches", child.replace(".", "_")) if p)
