"""Merge the branches of a user's own module by a graph pass: ``merge_branches(module, inputs)``.

Three rewrites, applied only where they compute what the module computes:

1. *Shared weights*: one submodule called on several inputs of the same shape becomes one call
   on the inputs folded into the batch, ``(B, k, ...) -> (B·k, ...)``, unfolded afterwards.
2. *Stacked weights*: several structurally identical sibling submodules (same class tree, same
   parameter and buffer shapes, same settings such as stride or eps, eval mode), each called
   once on inputs of the same shape, become one call of one branch whose weighted layers hold
   all k branches' weights (``torch.func.stack_module_state``): each Conv becomes one grouped
   Conv, each BatchNorm one BatchNorm over k·C channels, each Linear one batched MatMul.
3. *Partial* (``partial=True``): sibling submodules of one class that differ somewhere (another
   stem) whose own forwards match op for op: the children that are the same in all of them
   merge as in rule 2 and the rest runs per branch (``graph_joint``), their values folded once
   per run of merged children (``graph_joint_rewrite``).

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
The modules one job each: ``graph_trace`` (tracing), ``graph_candidates`` (what may merge, and
why not), ``graph_joint`` and ``graph_joint_rewrite`` (rule 3), ``branch_modules`` (the merged
modules), this one (the pass: trials, checks, descriptions).

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
from ccnbench.models.graph_joint import JointPlan, compact, plan_joint, weighted_layers
from ccnbench.models.graph_joint_rewrite import write_joint
from ccnbench.models.graph_trace import Untraceable, first_line, record, trace

_MAX_DEPTH = 3
# merge_branches' fold: the forms of a partial merge (graph_joint.FORMS) tried, in order.
_FORMS = {
    "once": ("channels", "batch", "per-child"),
    "batch": ("batch", "per-child"),
    "per-child": ("per-child",),
}
FOLDS = tuple(_FORMS)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# A rewrite must reproduce the module on the example inputs to within this, relative to the
# output's magnitude: round-off passes, a wrong channel order or mixed samples do not.
_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
_DEFAULT_RTOL = 1e-2


@dataclass(frozen=True)
class MergedGroup:
    """One rewrite: which calls became one, how, and what it saves in convolutions."""

    # "shared" (rule 1: fold into the batch), "stacked" (rule 2: one call over stacked weights) or
    # "partial" (rule 3: differing branches, what is the same in them merged)
    rule: str
    targets: tuple[str, ...]  # qualified submodule names, one per original call
    module_class: str
    convs_each: int
    # rule 3 only: the children merged, and those run per branch with why (branch 0's names)
    merged_children: tuple[str, ...] = ()
    kept_children: tuple[tuple[str, str], ...] = ()
    convs_merged: int = 0
    # rule 3: how the merged children's values are folded (graph_joint.FORMS): "channels" or
    # "batch" (once per run of merged children) or "per-child"
    fold: str = ""

    def describe(self) -> str:
        k = len(self.targets)
        if self.rule == "partial":
            kept = [f"{name} kept ({why})" for name, why in self.kept_children]
            merged = (
                f"{compact(list(self.merged_children))} merged: {self.convs_merged} of {self.convs_each} Conv"
            )
            merged += f" → {self.convs_merged} grouped Conv"
            return f"{k} × {self.module_class} ({', '.join(self.targets)}): " + "; ".join([*kept, merged])
        if self.rule == "stacked":
            convs = f"{self.convs_each} Conv each → {self.convs_each} grouped Conv"
            return f"{k} × {self.module_class} ({', '.join(self.targets)}), {convs}"
        once = f"{self.convs_each} Conv run once" if self.convs_each else "run once"
        return (
            f"{k} calls of {self.module_class} ({self.targets[0]}, shared weights) → {once} on a {k}× batch"
        )

    def to_dict(self) -> dict[str, Any]:
        data = {
            "rule": self.rule,
            "targets": list(self.targets),
            "module_class": self.module_class,
            "convs_each": self.convs_each,
            "description": self.describe(),
        }
        if self.rule == "partial":
            data |= {
                "merged_children": list(self.merged_children),
                "kept_children": [{"child": name, "why": why} for name, why in self.kept_children],
                "convs_merged": self.convs_merged,
                "fold": self.fold,
            }
        return data


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

    @property
    def partial(self) -> bool:
        """True when some group merged only part of its branches."""
        return any(g.rule == "partial" for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "merged": self.merged,
            "description": self.description,
            "groups": [g.to_dict() for g in self.groups],
            "reason": self.reason,
        }


def merge_branches(
    module: nn.Module, example_inputs: Sequence[Tensor], partial: bool = True, fold: str = "once"
) -> MergeOutcome:
    """Merge the parallel branches of ``module`` (see the module docstring for the rules).

    ``example_inputs`` are tensors ``module`` accepts (one per positional argument of its
    forward); they fix the shapes that decide which calls may merge, and every rewrite is checked
    on them. Use the module in eval mode: BatchNorm and Dropout in training mode do not commute
    with folding branches, so a training-mode branch stays kept. ``partial=False`` merges only
    whole identical branches (rule 3 off). ``fold`` is how a partly merged group moves between
    folded values and its branches: ``once`` per run of merged children, side by side in channels
    or else in the batch (the default); ``batch`` only in the batch; or ``per-child``, around each
    merged child (the last two for the evidence that compares them).
    """
    if fold not in _FORMS:
        raise ValueError(f"fold must be one of {', '.join(_FORMS)}, got {fold!r}")
    inputs = tuple(example_inputs)
    try:
        work = copy.deepcopy(module)
    except Exception as exc:
        return MergeOutcome(module, False, reason=f"cannot copy the module: {first_line(exc)}")
    try:
        rewritten, groups, notes = _merge_in(work, inputs, "", 0, _Options(partial, fold))
    except Untraceable as exc:
        return MergeOutcome(work, False, reason=str(exc))
    except Exception as exc:  # the pass must never take the user's run down with it
        return MergeOutcome(work, False, reason=f"graph merge failed: {first_line(exc)}")
    if not groups:
        reason = "; ".join(notes) if notes else "no parallel branches found"
        return MergeOutcome(work, False, reason=f"nothing to merge: {reason}")
    return MergeOutcome(rewritten, True, tuple(groups), "; ".join(notes) or None, tuple(notes))


@dataclass(frozen=True)
class _Options:
    partial: bool
    fold: str


@dataclass(frozen=True)
class _Rewrite:
    """One accepted (or trial) rewrite: its rule, the calls it replaces, and rule 3's plan."""

    rule: str
    calls: list[Call]
    plan: JointPlan | None = None


# --- rewriting -----------------------------------------------------------------------------------


def _merge_in(
    module: nn.Module, inputs: tuple[Tensor, ...], prefix: str, depth: int, options: _Options
) -> tuple[nn.Module, list[MergedGroup], list[str]]:
    """Merge inside ``module``; returns the module to use, the groups merged and notes."""
    gm = trace(module, len(inputs))
    values = record(gm, inputs)
    reference = values[next(n for n in gm.graph.nodes if n.op == "output")]
    calls, notes = submodule_calls(gm, values)
    found = candidate_groups(calls, options.partial)
    notes += found.notes
    near_misses = dict(found.near_misses)  # branch group -> its first difference
    accepted: list[_Rewrite] = []
    taken: set[str] = set()
    for rule, group in found.groups:
        targets = tuple(c.target for c in group)
        if taken.intersection(targets):
            continue  # a partial group merged these calls, or they are its stacked fallback
        trials: list[_Rewrite] = [_Rewrite(rule, group)]
        if rule == "partial":
            plan = plan_joint(group, values)
            if isinstance(plan, str):
                near_misses[targets] = plan
                continue
            if plan.saving() <= _whole_saving(found.groups, targets):
                continue  # its identical members merge whole, and that saves as much or more
            # What a form folding once may break (code that mixes channels or samples), folding
            # per child may not.
            forms = [plan.in_form(form) for form in _FORMS[options.fold]]
            trials = [_Rewrite(rule, group, p) for p in forms if p is not None]
        problem = None
        for trial in trials:
            problem = _try(module, inputs, reference, [*accepted, trial])
            if problem is None:
                accepted.append(trial)
                taken.update(targets)
                break
        if problem is not None:
            notes.append(f"{', '.join(targets)} stayed kept: {problem}")
    notes += [text for targets, text in near_misses.items() if not taken.issuperset(targets)]
    groups = [_describe(r, prefix) for r in accepted]
    result: nn.Module = _rewrite(module, len(inputs), accepted) if accepted else module
    if depth < _MAX_DEPTH:
        descended = _descend(gm, values, taken, prefix, depth, options)
        for target, inner, inner_groups, inner_notes in descended:
            notes += inner_notes
            if inner_groups:
                replace_submodule(result, target, inner)
                groups += inner_groups
    return result, groups, notes


def _whole_saving(groups: list[tuple[str, list[Call]]], targets: tuple[str, ...]) -> int:
    """Layers with weights the stacked groups among ``targets`` would remove, merged whole."""
    return sum(
        (len(group) - 1) * weighted_layers(group[0].module)
        for rule, group in groups
        if rule == "stacked" and {c.target for c in group} <= set(targets)
    )


def _try(
    module: nn.Module, inputs: tuple[Tensor, ...], reference: Any, rewrites: list[_Rewrite]
) -> str | None:
    """None when ``module`` with ``rewrites`` applied reproduces ``reference``, else what went wrong."""
    try:
        trial = _rewrite(module, len(inputs), rewrites)
    except Unsupported as exc:
        return str(exc)
    return _disagreement(trial, inputs, reference)


def _descend(
    gm: fx.GraphModule,
    values: dict[fx.Node, Any],
    merged: set[str],
    prefix: str,
    depth: int,
    options: _Options,
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
            inner, inner_groups, inner_notes = _merge_in(
                child, tuple(args), f"{prefix}{target}.", depth + 1, options
            )
        except Exception:
            continue  # an untraceable or unusual child simply stays as written
        found.append((target, inner, inner_groups, [f"in {prefix}{target}: {note}" for note in inner_notes]))
    return found


def _rewrite(module: nn.Module, num_inputs: int, rewrites: list[_Rewrite]) -> fx.GraphModule:
    """A fresh trace of ``module`` with each rewrite's calls replaced by one merged call (rules 1
    and 2) or by their branches' steps, partly merged (rule 3)."""
    gm = trace(module, num_inputs)
    by_name = {n.name: n for n in gm.graph.nodes}
    for index, rewrite in enumerate(rewrites):
        group = rewrite.calls
        nodes = [by_name[c.node.name] for c in group]
        # Insert where every input exists (just before the last call); uses are re-ordered below.
        with gm.graph.inserting_before(nodes[-1]):
            if rewrite.plan is not None:
                parts = write_joint(gm, rewrite.plan, nodes)
            else:
                call = gm.graph.call_module(_add_merged(gm, rewrite, index), tuple(n.args[0] for n in nodes))
                parts = [gm.graph.call_function(operator.getitem, (call, i)) for i in range(len(nodes))]
        for node, part in zip(nodes, parts):
            node.replace_all_uses_with(part)
        for node in nodes:
            gm.graph.erase_node(node)
    _topological_order(gm.graph)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _add_merged(gm: fx.GraphModule, rewrite: _Rewrite, index: int) -> str:
    """The module of a rule 1 or rule 2 rewrite, added to ``gm``; its name."""
    group = rewrite.calls
    first = group[0].module
    merged = (
        BatchFolded(first, len(group))
        if rewrite.rule == "shared"
        else StackedBranches([c.module for c in group])
    )
    # Which calls it replaced, for models.correspondence (explain's kept-vs-merged rows).
    merged.merged_from = tuple(c.target for c in group)
    target = _new_name(gm, group, rewrite.rule, index)
    gm.add_submodule(target, merged)
    return target


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
        return f"the merged call does not run ({first_line(exc)})"
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


def _describe(rewrite: _Rewrite, prefix: str) -> MergedGroup:
    group = rewrite.calls
    module = group[0].module
    targets = tuple(prefix + c.target for c in group)
    if rewrite.plan is not None:
        plan = rewrite.plan
        total, merged = plan.conv_counts()
        children = tuple(plan.children("merged"))
        return MergedGroup(
            "partial", targets, type(module).__name__, total, children, tuple(plan.kept()), merged, plan.form
        )
    convs = sum(isinstance(m, _CONV_TYPES) for m in module.modules())
    return MergedGroup(rewrite.rule, targets, type(module).__name__, convs)
