"""Finding what ``graph_merge`` may merge: the submodule calls of a traced forward, grouped into
independent calls of one submodule (shared weights), of identical siblings (stacked weights) or of
siblings of one class that differ somewhere (partly merged by ``graph_joint``), and why branches
that do not merge whole differ, in words.
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
        if not all_tensors(values.get(node)):
            continue
        calls.append(Call(node, str(node.target), module, node.args[0], (tuple(x.shape), x.dtype)))
    return calls, notes


def all_tensors(value: Any) -> bool:
    leaves = pytree.tree_leaves(value)
    return bool(leaves) and all(isinstance(t, Tensor) and t.dim() > 0 for t in leaves)


def in_training(module: nn.Module) -> bool:
    return any(m.training for m in module.modules())


def signature(module: nn.Module) -> tuple[Any, ...]:
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
        return f"inputs differ: {b.target} gets {shape_text(b.input_key[0])}, {a.target} {shape_text(a.input_key[0])}"
    return module_difference(a.target, a.module, b.target, b.module)


def module_difference(a_name: str, a: nn.Module, b_name: str, b: nn.Module) -> str:
    """Why module ``b`` (named ``b_name``) does not compute what ``a`` does with its weights, in words."""
    if type(a) is not type(b):
        return f"branches differ: {b_name} is a {type(b).__name__}, {a_name} a {type(a).__name__}"
    pa, pb = _tensors(a), _tensors(b)
    for name in pa.keys() | pb.keys():
        if name not in pa or name not in pb:
            return f"branches differ: {b_name} and {a_name} have different layers ({name})"
    for name, value in pa.items():
        if tuple(value.shape) != tuple(pb[name].shape):
            return (
                f"branches differ: {b_name}.{name} is {shape_text(pb[name].shape)}, "
                f"{a_name}.{name} {shape_text(value.shape)}"
            )
    ma, mb = dict(a.named_modules()), dict(b.named_modules())
    for name, sub in ma.items():
        other = mb.get(name)
        if other is None or type(other) is not type(sub):
            return f"branches differ: {b_name} and {a_name} have different layers ({name or 'root'})"
        if _hyperparameters(sub) != _hyperparameters(other):
            where = f".{name}" if name else ""
            return (
                f"branches differ: {b_name}{where} is {type(other).__name__}({other.extra_repr()}), "
                f"{a_name}{where} {type(sub).__name__}({sub.extra_repr()})"
            )
    return f"branches differ: {b_name} and {a_name}"


def short_difference(modules: list[nn.Module]) -> str:
    """How modules of one place in k branches differ, briefly: ``64×1×7×7×7 vs 64×1×3×3×3``
    (their weights' shapes), ``stride 2×2×2 vs 1×1×1`` (a setting), ``a GroupNorm vs a BatchNorm3d``."""
    first = modules[0]
    if any(type(m) is not type(first) for m in modules):
        return " vs ".join(f"a {type(m).__name__}" for m in modules)
    tensors = [_tensors(m) for m in modules]
    for name in tensors[0]:
        shapes = [tuple(t[name].shape) if name in t else None for t in tensors]
        if len(set(shapes)) > 1:
            texts = [shape_text(s) if s is not None else "none" for s in shapes]
            return ("" if name == "weight" else f"{name} ") + " vs ".join(texts)
    named = [dict(m.named_modules()) for m in modules]
    for name, sub in named[0].items():
        others = [n[name] for n in named if name in n and type(n[name]) is type(sub)]
        if len(others) < len(modules):
            return f"different layers ({name or type(first).__name__})"
        settings = [dict(_hyperparameters(o)[1]) for o in others]
        for key in settings[0]:
            values = [s.get(key) for s in settings]
            if len({repr(v) for v in values}) > 1:
                where = f"{name}." if name else ""
                return f"{where}{key} " + " vs ".join(_setting_text(v) for v in values)
        if len({o.extra_repr() for o in others}) > 1:
            return " vs ".join(f"{type(o).__name__}({o.extra_repr()})" for o in others)
    return "different weights"


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    found = dict(module.named_parameters())
    found.update(module.named_buffers())
    return found


def _setting_text(value: Any) -> str:
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return "×".join(map(str, value))
    return str(value)


def shape_text(shape: Iterable[int]) -> str:
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


@dataclass(frozen=True)
class Candidates:
    """What may merge in one traced forward, in graph order, and why near misses stayed kept.

    ``groups`` are (rule, calls): "shared" (one submodule called on several inputs), "stacked"
    (identical siblings) or "partial" (siblings of one class that differ somewhere: the joint
    descent of ``graph_joint`` merges what is the same in them). A partial group comes before the
    stacked groups of its own members, which are its fallback. ``near_misses`` are one line per
    branch group that does not merge whole: (its targets, its first difference).
    """

    groups: list[tuple[str, list[Call]]]
    notes: list[str]
    near_misses: list[tuple[tuple[str, ...], str]]


def candidate_groups(calls: list[Call], partial: bool = False) -> Candidates:
    """Rule 1 and rule 2 groups (and, with ``partial``, groups of differing siblings) in graph order."""
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
        if in_training(same[0].module):
            notes.append(f"{target} is in training mode (merging is for eval mode)")
            continue
        by_shape: dict[tuple[Any, ...], list[Call]] = defaultdict(list)
        for call in same:
            by_shape[call.input_key].append(call)
        for shaped in by_shape.values():
            groups.extend(("shared", s) for s in _independent(shaped))
        if len(by_shape) > 1:
            shapes = ", ".join(shape_text(k[0]) for k in by_shape)
            notes.append(f"{target} is called on inputs of different shapes ({shapes})")
    by_parent: dict[str, list[Call]] = defaultdict(list)
    for call in once:
        by_parent[parent_name(call.target)].append(call)
    near_misses: list[tuple[tuple[str, ...], str]] = []
    for siblings in by_parent.values():
        if len(siblings) < 2:
            continue
        classes: dict[tuple[Any, ...], list[Call]] = defaultdict(list)
        for call in siblings:
            classes[(signature(call.module), call.input_key)].append(call)
        for same in classes.values():
            if len(same) < 2:
                continue
            if any(in_training(c.module) for c in same):
                notes.append(
                    f"{', '.join(c.target for c in same)} are in training mode (merging is for eval mode)"
                )
                continue
            groups.extend(("stacked", s) for s in _independent(same))
        for branches in _branch_groups(siblings):
            first = branches[0]
            other = next((c for c in branches if _key(c) != _key(first)), None)
            if other is None:
                continue  # identical: a stacked group above
            near_misses.append((tuple(c.target for c in branches), _difference(first, other)))
            if partial and any(in_training(c.module) for c in branches):
                notes.append(
                    f"{', '.join(c.target for c in branches)} are in training mode (merging is for eval mode)"
                )
            elif partial:
                groups.append(("partial", branches))
    # A partial group first among groups that start at the same call: its members' stacked groups
    # are what is left to try when it does not merge.
    groups.sort(key=lambda g: (_position(g[1][0].node), g[0] != "partial"))
    return Candidates(groups, notes, near_misses)


def _key(call: Call) -> tuple[Any, ...]:
    return (signature(call.module), call.input_key)


def _branch_groups(siblings: list[Call]) -> list[list[Call]]:
    """Sibling branches: composite modules of one class, none of whose inputs depends on another's.

    Only composite modules (trunks, members) count as branches: two single layers of different
    sizes, such as two heads, are no branches, nor are the stages of one trunk (``layer1`` feeds
    ``layer2``), which depend on each other.
    """
    by_class: dict[type, list[Call]] = defaultdict(list)
    for call in siblings:
        if any(True for _ in call.module.children()):
            by_class[type(call.module)].append(call)
    return [group for same_class in by_class.values() for group in _independent(same_class)]


def _position(node: fx.Node) -> int:
    return next(i for i, n in enumerate(node.graph.nodes) if n is node)
