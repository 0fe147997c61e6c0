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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

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


# --- the two rewrites as modules: the graph calls them where the user's calls were -----------------


class BatchFolded(nn.Module):
    """Rule 1: one call of ``module`` on k same-shaped inputs folded into the batch, then unfolded."""

    def __init__(self, module: nn.Module, calls: int) -> None:
        super().__init__()
        self.module = module
        self.calls = calls

    def forward(self, *inputs: Tensor) -> tuple[Any, ...]:
        y = self.module(torch.stack(inputs, dim=1).flatten(0, 1))
        # (B·k, ...) -> (B, k, ...): -1 keeps the batch dynamic for export.
        unfolded = pytree.tree_map(lambda t: t.unflatten(0, (-1, self.calls)), y)
        return tuple(pytree.tree_map(lambda t, i=i: t[:, i], unfolded) for i in range(self.calls))


class StackedBranches(nn.Module):
    """Rule 2: k identical branches run as one, their weighted layers stacked.

    The branches' inputs are folded into the batch, sample-major, ``(B, k, ...) -> (B·k, ...)``:
    everything without weights (activations, pooling, ``view(x.size(0), -1)``, residual adds,
    ``torch.cat(dim=1)``) treats each row as its own sample and so computes every branch at
    once, unchanged. Each layer with weights sees its input as the view ``(B, k·C, ...)`` (no
    copy: sample-major folding puts a sample's k branches next to each other) and runs as one
    grouped layer over the k branches' weights (``torch.func.stack_module_state`` order):
    ``Conv`` with k times the groups, ``BatchNorm`` over k·C channels, ``Linear`` as one batched
    MatMul. Layers with weights of other kinds make the constructor raise ``_Unsupported``.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.calls = len(modules)
        branch = copy.deepcopy(modules[0])
        for name, layer in list(branch.named_modules()):
            if not _own_tensors(layer):
                continue
            peers = [m.get_submodule(name) for m in modules]
            stacked = _stacked_layer(peers, name or type(layer).__name__)
            if name:
                _replace_submodule(branch, name, stacked)
            else:
                branch = stacked
        self.branch = branch

    def forward(self, *inputs: Tensor) -> tuple[Any, ...]:
        y = self.branch(torch.stack(inputs, dim=1).flatten(0, 1))
        unfolded = pytree.tree_map(lambda t: t.unflatten(0, (-1, self.calls)), y)
        return tuple(pytree.tree_map(lambda t, i=i: t[:, i], unfolded) for i in range(self.calls))


class _Unsupported(Exception):
    """A branch holds a layer with weights that has no stacked form; the message says which."""


def _own_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in itertools.chain(module._parameters.values(), module._buffers.values()))


class StackedLayer(nn.Module):
    """k layers as one grouped layer over the sample-major folded batch (see StackedBranches)."""

    def __init__(self, layer: nn.Module, calls: int, kind: str) -> None:
        super().__init__()
        self.layer = layer
        self.calls = calls
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "linear":
            # (B·k, ..., F) -> (B, k, ..., 1, F) @ (k, 1.., F, O): one MatMul for every branch.
            folded = x.unflatten(0, (-1, self.calls)).unsqueeze(-2)
            ones = [1] * (x.dim() - 2)
            weight = self.layer.weight.transpose(1, 2)
            y = (folded @ weight.reshape(self.calls, *ones, *weight.shape[1:])).squeeze(-2)
            if self.layer.bias is not None:
                y = y + self.layer.bias.reshape(self.calls, *ones, -1)
            return y.flatten(0, 1)
        # Conv and BatchNorm: (B·k, C, ...) viewed as (B, k·C, ...) and back.
        packed = x.unflatten(0, (-1, self.calls)).flatten(1, 2)
        return self.layer(packed).unflatten(1, (self.calls, -1)).flatten(0, 1)


class _StackedLinearWeights(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)


def _stacked_layer(peers: list[nn.Module], name: str) -> StackedLayer:
    first, k = peers[0], len(peers)
    params, buffers = torch.func.stack_module_state(peers)
    params = {n: p.detach() for n, p in params.items()}
    if type(first) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and first.padding_mode == "zeros":
        conv = copy.deepcopy(first)
        conv.in_channels, conv.out_channels, conv.groups = (
            k * first.in_channels,
            k * first.out_channels,
            k * first.groups,
        )
        conv.weight = nn.Parameter(params["weight"].flatten(0, 1), requires_grad=False)
        if first.bias is not None:
            conv.bias = nn.Parameter(params["bias"].flatten(), requires_grad=False)
        return StackedLayer(conv, k, "conv")
    if type(first) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        norm = copy.deepcopy(first)
        norm.num_features = k * first.num_features
        for n, value in params.items():
            setattr(norm, n, nn.Parameter(value.flatten(), requires_grad=False))
        for n, value in buffers.items():
            # num_batches_tracked is one counter per layer, not per channel.
            setattr(norm, n, value[0] if value.dim() == 1 else value.flatten())
        return StackedLayer(norm, k, "norm")
    if type(first) is nn.Linear:
        return StackedLayer(_StackedLinearWeights(params["weight"], params.get("bias")), k, "linear")
    raise _Unsupported(
        f"{name} is a {type(first).__name__} with weights, which has no stacked form here "
        "(stacked: Conv1d/2d/3d, BatchNorm1d/2d/3d, Linear)"
    )


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


# --- finding candidates --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    node: fx.Node
    target: str
    module: nn.Module
    arg: fx.Node
    input_key: tuple[Any, ...]  # shape and dtype of the one input


def _calls(gm: fx.GraphModule, values: dict[fx.Node, Any]) -> tuple[list[_Call], list[str]]:
    """Calls of one submodule on one tensor with parameters to share: the merge candidates."""
    calls, notes = [], []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if not any(True for _ in module.parameters()):
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            continue
        x = values.get(node.args[0])
        if not isinstance(x, Tensor) or x.dim() == 0:
            continue
        if not _all_tensors(values.get(node)):
            continue
        calls.append(_Call(node, str(node.target), module, node.args[0], (tuple(x.shape), x.dtype)))
    return calls, notes


def _all_tensors(value: Any) -> bool:
    leaves = pytree.tree_leaves(value)
    return bool(leaves) and all(isinstance(t, Tensor) and t.dim() > 0 for t in leaves)


def _training(module: nn.Module) -> bool:
    return any(m.training for m in module.modules())


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """Everything that makes two modules compute the same function of (weights, input)."""
    tree = tuple((name, type(m), _hyperparameters(m)) for name, m in module.named_modules())
    params = tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers())
    return tree, params, buffers


def _hyperparameters(m: nn.Module) -> tuple[Any, ...]:
    """A module's plain settings (stride, eps, slope, dropout p...): what shapes do not show."""
    plain = (int, float, str, bool, type(None), tuple)
    own = tuple(
        sorted(
            (k, v)
            for k, v in vars(m).items()
            if not k.startswith("_") and k != "training" and isinstance(v, plain) and _hashable(v)
        )
    )
    return (m.extra_repr(), own)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _difference(a: _Call, b: _Call) -> str:
    """Why ``b`` cannot merge with ``a``, in words."""
    if a.input_key != b.input_key:
        return f"inputs differ: {b.target} gets {_shape_text(b.input_key[0])}, {a.target} {_shape_text(a.input_key[0])}"
    if type(a.module) is not type(b.module):
        return f"branches differ: {b.target} is a {type(b.module).__name__}, {a.target} a {type(a.module).__name__}"
    pa, pb = dict(a.module.named_parameters()), dict(b.module.named_parameters())
    pa.update(a.module.named_buffers())
    pb.update(b.module.named_buffers())
    for name in pa.keys() | pb.keys():
        if name not in pa or name not in pb:
            return f"branches differ: {b.target} and {a.target} have different layers ({name})"
    for name, value in pa.items():
        if tuple(value.shape) != tuple(pb[name].shape):
            return (
                f"branches differ: {b.target}.{name} is {_shape_text(pb[name].shape)}, "
                f"{a.target}.{name} {_shape_text(value.shape)}"
            )
    ma, mb = dict(a.module.named_modules()), dict(b.module.named_modules())
    for name, sub in ma.items():
        other = mb.get(name)
        if other is None or type(other) is not type(sub):
            return f"branches differ: {b.target} and {a.target} have different layers ({name or 'root'})"
        if _hyperparameters(sub) != _hyperparameters(other):
            where = f".{name}" if name else ""
            return (
                f"branches differ: {b.target}{where} is {type(other).__name__}({other.extra_repr()}), "
                f"{a.target}{where} {type(sub).__name__}({sub.extra_repr()})"
            )
    return f"branches differ: {b.target} and {a.target}"


def _shape_text(shape: Iterable[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def _independent(calls: list[_Call]) -> list[list[_Call]]:
    """Split ``calls`` into sets none of whose inputs depends on another call of the set."""
    sets: list[list[_Call]] = []
    for call in calls:
        upstream = _ancestors(call.arg)
        for chosen in sets:
            if all(c.node not in upstream and call.node not in _ancestors(c.arg) for c in chosen):
                chosen.append(call)
                break
        else:
            sets.append([call])
    return [s for s in sets if len(s) > 1]


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _parent(target: str) -> str:
    return target.rpartition(".")[0]


def _candidate_groups(calls: list[_Call]) -> tuple[list[tuple[str, list[_Call]]], list[str]]:
    """Rule 1 and rule 2 groups, in graph order, and why near-misses stayed kept."""
    groups: list[tuple[str, list[_Call]]] = []
    notes: list[str] = []
    by_target: dict[str, list[_Call]] = defaultdict(list)
    for call in calls:
        by_target[call.target].append(call)
    once: list[_Call] = []
    for target, same in by_target.items():
        if len(same) == 1:
            once.append(same[0])
            continue
        if _training(same[0].module):
            notes.append(f"{target} is in training mode (merging is for eval mode)")
            continue
        by_shape: dict[tuple[Any, ...], list[_Call]] = defaultdict(list)
        for call in same:
            by_shape[call.input_key].append(call)
        for shaped in by_shape.values():
            groups.extend(("shared", s) for s in _independent(shaped))
        if len(by_shape) > 1:
            shapes = ", ".join(_shape_text(k[0]) for k in by_shape)
            notes.append(f"{target} is called on inputs of different shapes ({shapes})")
    by_parent: dict[str, list[_Call]] = defaultdict(list)
    for call in once:
        by_parent[_parent(call.target)].append(call)
    for siblings in by_parent.values():
        if len(siblings) < 2:
            continue
        classes: dict[tuple[Any, ...], list[_Call]] = defaultdict(list)
        for call in siblings:
            classes[(_signature(call.module), call.input_key)].append(call)
        for same in classes.values():
            if len(same) < 2:
                continue
            if any(_training(c.module) for c in same):
                notes.append(
                    f"{', '.join(c.target for c in same)} are in training mode (merging is for eval mode)"
                )
                continue
            groups.extend(("stacked", s) for s in _independent(same))
        if len(classes) > 1:
            notes.extend(_near_misses(siblings, classes))
    groups.sort(key=lambda g: _position(g[1][0].node))
    return groups, notes


def _near_misses(siblings: list[_Call], classes: dict[tuple[Any, ...], list[_Call]]) -> list[str]:
    """Why siblings of one class differ. Only composite modules (trunks, members) count as
    branches here: two single layers of different sizes, such as two heads, are no near-miss."""
    notes = []
    by_class: dict[type, list[_Call]] = defaultdict(list)
    for call in siblings:
        if any(True for _ in call.module.children()):
            by_class[type(call.module)].append(call)
    for same_class in by_class.values():
        firsts = [calls[0] for calls in classes.values() if calls[0] in same_class]
        notes.extend(_difference(firsts[0], other) for other in firsts[1:])
    return notes


def _position(node: fx.Node) -> int:
    return next(i for i, n in enumerate(node.graph.nodes) if n is node)


# --- rewriting -----------------------------------------------------------------------------------


def _merge_in(
    module: nn.Module, inputs: tuple[Tensor, ...], prefix: str, depth: int
) -> tuple[nn.Module, list[MergedGroup], list[str]]:
    """Merge inside ``module``; returns the module to use, the groups merged and notes."""
    gm = _trace(module, len(inputs))
    values = _record(gm, inputs)
    reference = values[next(n for n in gm.graph.nodes if n.op == "output")]
    calls, notes = _calls(gm, values)
    candidates, more = _candidate_groups(calls)
    notes += more
    accepted: list[tuple[str, list[_Call]]] = []
    for rule, group in candidates:
        try:
            trial = _rewrite(module, len(inputs), [*accepted, (rule, group)])
        except _Unsupported as exc:
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
                _replace_submodule(result, target, inner)
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


def _replace_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, attr = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _rewrite(module: nn.Module, num_inputs: int, groups: list[tuple[str, list[_Call]]]) -> fx.GraphModule:
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


def _new_name(gm: fx.GraphModule, group: list[_Call], rule: str, index: int) -> str:
    common = _parent(group[0].target) if rule == "stacked" else group[0].target
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


def _describe(rule: str, group: list[_Call], prefix: str) -> MergedGroup:
    module = group[0].module
    convs = sum(isinstance(m, _CONV_TYPES) for m in module.modules())
    return MergedGroup(rule, tuple(prefix + c.target for c in group), type(module).__name__, convs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
