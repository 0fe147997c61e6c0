"""Finding what ``graph_merge`` may merge: the submodule calls of a traced forward, grouped into
independent calls of one submodule (shared weights) or of identical siblings (stacked weights),
and why near misses were left alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree


@dataclass(frozen=True)
class Call:
    node: fx.Node
    target: str
    module: nn.Module
    arg: fx.Node
    input_key: tuple[Any, ...]  # shape and dtype of the one input


def submodule_calls(gm: fx.GraphModule, values: dict[fx.Node, Any]) -> tuple[list[Call], list[str]]:
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
        calls.append(Call(node, str(node.target), module, node.args[0], (tuple(x.shape), x.dtype)))
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


def _difference(a: Call, b: Call) -> str:
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


def _independent(calls: list[Call]) -> list[list[Call]]:
    """Split ``calls`` into sets none of whose inputs depends on another call of the set."""
    sets: list[list[Call]] = []
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


def parent_name(target: str) -> str:
    return target.rpartition(".")[0]


def candidate_groups(calls: list[Call]) -> tuple[list[tuple[str, list[Call]]], list[str]]:
    """Rule 1 and rule 2 groups, in graph order, and why near-misses stayed kept."""
    groups: list[tuple[str, list[Call]]] = []
    notes: list[str] = []
    by_target: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_target[call.target].append(call)
    once: list[Call] = []
    for target, same in by_target.items():
        if len(same) == 1:
            once.append(same[0])
            continue
        if _training(same[0].module):
            notes.append(f"{target} is in training mode (merging is for eval mode)")
            continue
        by_shape: dict[tuple[Any, ...], list[Call]] = defaultdict(list)
        for call in same:
            by_shape[call.input_key].append(call)
        for shaped in by_shape.values():
            groups.extend(("shared", s) for s in _independent(shaped))
        if len(by_shape) > 1:
            shapes = ", ".join(_shape_text(k[0]) for k in by_shape)
            notes.append(f"{target} is called on inputs of different shapes ({shapes})")
    by_parent: dict[str, list[Call]] = defaultdict(list)
    for call in once:
        by_parent[parent_name(call.target)].append(call)
    for siblings in by_parent.values():
        if len(siblings) < 2:
            continue
        classes: dict[tuple[Any, ...], list[Call]] = defaultdict(list)
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


def _near_misses(siblings: list[Call], classes: dict[tuple[Any, ...], list[Call]]) -> list[str]:
    """Why siblings of one class differ. Only composite modules (trunks, members) count as
    branches here: two single layers of different sizes, such as two heads, are no near-miss."""
    notes = []
    by_class: dict[type, list[Call]] = defaultdict(list)
    for call in siblings:
        if any(True for _ in call.module.children()):
            by_class[type(call.module)].append(call)
    for same_class in by_class.values():
        firsts = [calls[0] for calls in classes.values() if calls[0] in same_class]
        notes.extend(_difference(firsts[0], other) for other in firsts[1:])
    return notes


def _position(node: fx.Node) -> int:
    return next(i for i, n in enumerate(node.graph.nodes) if n is node)
