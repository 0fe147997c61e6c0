"""`ccnbench explain`: plan the cases as ``check`` does, profile them, and lay out the tables.

Without ``--compare`` each (model, layout, precision, batch) is one table with a column per
target. ``--compare A,B`` names exactly two formats, two layouts on each target
(``kept,merged``) or two targets on each layout (``ort:cpu,openvino:cpu``), and gives one
two-column table per pair, rows ordered by the share of the difference they explain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccnbench.backends import Target
from ccnbench.errors import UsageError, one_line
from ccnbench.explain.cases import Settings, Skipped, profile_groups
from ccnbench.explain.records import FormatProfile, LayerTable
from ccnbench.explain.table import Renamer, layer_table
from ccnbench.models import LAYOUTS, FusionNet
from ccnbench.models.correspondence import builtin_renamer, graph_renamers
from ccnbench.roofline.layer_costs import ModuleCosts, trace_costs
from ccnbench.roofline.roofs import Roof, RoofPair, roofs_for
from ccnbench.run import config, plan
from ccnbench.run.plan import CaseGroup
from ccnbench.source import ModelSource

DEFAULT_TARGETS = "torch:cpu,ort:cpu,openvino:cpu"


@dataclass(frozen=True)
class Explanation:
    profiles: tuple[FormatProfile, ...]
    tables: tuple[LayerTable, ...]
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = field(default=())
    roofs: tuple[Roof, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "roofs": [r.to_dict() for r in self.roofs],
            "profiles": [p.to_dict() for p in self.profiles],
            "tables": [t.to_dict() for t in self.tables],
            "skipped": [{"case": s.label, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }


def compare_kind(text: str | None) -> tuple[str, tuple[str, str]] | None:
    """``kept,merged`` -> ("layout", ...), ``ort:cpu,openvino:cpu`` -> ("target", ...), or a usage error."""
    if text is None:
        return None
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if len(items) != 2 or items[0] == items[1]:
        raise UsageError(
            f"--compare takes exactly two different formats (kept,merged or ort:cpu,openvino:cpu), got {text!r}; "
            "for more formats side by side leave --compare out: each target is a column"
        )
    if all(i in LAYOUTS for i in items):
        return "layout", (items[0], items[1])
    if all(":" in i for i in items):
        for item in items:
            Target.parse(item)
        return "target", (items[0], items[1])
    raise UsageError(f"--compare names two layouts or two targets, not one of each: {text!r}")


def planned(
    flags: Mapping[str, Any], compare: str | None
) -> tuple[list[CaseGroup], tuple[str, tuple[str, str]] | None]:
    """The case groups to profile: ``check``'s planning, with ``--compare`` choosing the layouts or targets."""
    kind = compare_kind(compare)
    flags = dict(flags)
    if kind is not None:
        flag = "--layout" if kind[0] == "layout" else "--targets"
        given = flags.get(flag)
        if given is not None and set(str(given).split(",")) != set(kind[1]):
            raise UsageError(f"{flag} {given} and --compare {compare} both choose the {kind[0]}s: give one")
        flags[flag] = ",".join(kind[1])
    flags.setdefault("--targets", DEFAULT_TARGETS)
    if flags.get("--targets") is None:
        flags["--targets"] = DEFAULT_TARGETS
    return plan.expand(config.from_command_line(flags, None), timed=False), kind


def explain(
    flags: Mapping[str, Any],
    compare: str | None,
    settings: Settings,
    on_case: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_measure: Callable[[str], None] | None = None,
) -> Explanation:
    groups, kind = planned(flags, compare)
    if on_total:
        on_total(sum(len(g.batches) for g in groups))
    profiles, skipped = profile_groups(groups, settings, on_case)
    sources = {(g.source.label, g.source.layout): g.source for g in groups}
    line = Roofline(profiles, sources, on_measure) if settings.roofline else None
    tables = compare_tables(profiles, kind, sources, line) if kind else single_tables(profiles, sources, line)
    notes = [f"not compared: {label}" for label in _unpaired(profiles, kind)] if kind else []
    if line is not None:
        notes += line.notes + above_roof_notes(tables)
    return Explanation(
        tuple(profiles), tuple(tables), tuple(skipped), tuple(notes), line.roofs() if line else ()
    )


def above_roof_notes(tables: Sequence[LayerTable]) -> list[str]:
    """What a reading above 100 % says: above the memory roof, the layer's tensors stayed in
    cache (the roof is DRAM's); above a compute roof, the roof was measured low."""
    memory, compute = set(), set()
    for table in tables:
        for row in table.rows:
            for column, cell in zip(table.columns, row.cells):
                if cell is not None and cell.reading is not None and cell.reading.of_roof > 1.0:
                    (memory if cell.reading.bound == "memory" else compute).add(column.split()[0])
    notes = []
    if memory:
        notes.append(
            f"roofline: rows above 100 % of the memory roof on {', '.join(sorted(memory))} ran from cache "
            "(the memory roof is DRAM's)"
        )
    if compute:
        notes.append(
            f"roofline: rows above their compute roof on {', '.join(sorted(compute))}: that roof was measured "
            "low (a busy machine); `ccnbench roofs --refresh` on a quiet machine raises it"
        )
    return notes


class Roofline:
    """Each profile's layer costs (one traced forward per model, layout, precision and batch)
    and the roofs of its runtime, measured or read from this machine's cache."""

    def __init__(
        self,
        profiles: Sequence[FormatProfile],
        sources: Mapping[tuple[str, str], ModelSource],
        on_measure: Callable[[str], None] | None = None,
    ) -> None:
        self.notes: list[str] = []
        self._costs: dict[tuple[str, str, str, int], ModuleCosts | None] = {}
        for p in profiles:
            key = (p.model, p.layout, p.precision, p.batch)
            if key not in self._costs:
                self._costs[key] = self._trace(sources.get((p.model, p.layout)), p)
        self._pairs = roofs_for(
            ((Target.parse(p.target), p.precision, p.threads) for p in profiles),
            on_measure=(lambda key: on_measure(f"measuring the roof: {key}")) if on_measure else None,
        )
        for pair in self._pairs.values():
            self.notes += [f"roofline: {reason}" for reason in pair.reasons if reason not in self.notes]

    def _trace(self, source: ModelSource | None, p: FormatProfile) -> ModuleCosts | None:
        if source is None or not source.has_module:
            self.notes.append(f"roofline: {p.model} has no PyTorch module to count its layers")
            return None
        try:
            return trace_costs(source.module_for(p.layout), source.make_inputs(p.batch), p.precision)
        except Exception as exc:  # a module that will not trace forward: no counts, the times stand
            self.notes.append(f"roofline: {p.model} {p.layout} layers not counted ({one_line(exc)})")
            return None

    def costs(self, p: FormatProfile) -> ModuleCosts | None:
        return self._costs.get((p.model, p.layout, p.precision, p.batch))

    def pair(self, p: FormatProfile) -> RoofPair | None:
        return self._pairs.get((Target.parse(p.target), p.precision, p.threads))

    def roofs(self) -> tuple[Roof, ...]:
        found = {r.key: r for pair in self._pairs.values() for r in (pair.compute, pair.memory) if r}
        return tuple(found.values())


def single_tables(
    profiles: Sequence[FormatProfile],
    sources: Mapping[tuple[str, str], ModelSource],
    line: Roofline | None = None,
) -> list[LayerTable]:
    """One table per (model, layout, precision, batch), a column per target."""
    by_case: dict[tuple[str, str, str, int], list[FormatProfile]] = {}
    for p in profiles:
        by_case.setdefault((p.model, p.layout, p.precision, p.batch), []).append(p)
    names = _Renamers(sources)
    tables = []
    for (model, layout, precision, batch), members in by_case.items():
        # One layout: its own names, a merged network's stacking wrappers folded (see renamers).
        rename = names.of(model)["merged"] if layout == "merged" else _same
        title = f"{model} {layout}, {precision}, batch {batch}, {members[0].threads} thread(s)"
        tables.append(layer_table(members, title, [rename] * len(members), **_roofline_of(members, line)))
    return tables


def compare_tables(
    profiles: Sequence[FormatProfile],
    kind: tuple[str, tuple[str, str]],
    sources: Mapping[tuple[str, str], ModelSource],
    line: Roofline | None = None,
) -> list[LayerTable]:
    """One two-column table per pair the comparison names, rows sorted by the difference."""
    dimension, (a, b) = kind
    names = _Renamers(sources)
    tables = []
    for first, second in _pairs(profiles, kind).values():
        model = first.model
        by_layout = names.of(model)
        displays = None
        if dimension == "layout":
            rename = [by_layout[first.layout], by_layout[second.layout]]
            displays = [
                _same if first.layout == "kept" else rename[0],
                _same if second.layout == "kept" else rename[1],
            ]
            title = f"{model} {a} vs {b} on {first.target}, {first.precision}, batch {first.batch}"
        else:
            rename = [by_layout[first.layout]] * 2
            title = f"{model} {first.layout}: {a} vs {b}, {first.precision}, batch {first.batch}"
        title += f", {first.threads} thread(s)"
        if first.attributed and second.attributed:
            extra = _roofline_of([first, second], line)
            tables.append(
                layer_table([first, second], title, rename, compare=True, displays=displays, **extra)
            )
    return tables


def _roofline_of(profiles: Sequence[FormatProfile], line: Roofline | None) -> dict[str, Any]:
    if line is None:
        return {}
    return {"costs": [line.costs(p) for p in profiles], "roofs": [line.pair(p) for p in profiles]}


class _Renamers:
    """``renamers`` once per model: it builds the model's modules (and for a user's module runs
    the merge pass), which every table of that model shares."""

    def __init__(self, sources: Mapping[tuple[str, str], ModelSource]) -> None:
        self._sources = {model: source for (model, _), source in sources.items()}
        self._made: dict[str, dict[str, Renamer]] = {}

    def of(self, model: str) -> dict[str, Renamer]:
        if model not in self._made:
            self._made[model] = renamers(self._sources[model])
        return self._made[model]


def _pair_key(p: FormatProfile, dimension: str) -> tuple[Any, ...]:
    other = p.target if dimension == "layout" else p.layout
    return (p.model, other, p.precision, p.batch)


def _pairs(
    profiles: Sequence[FormatProfile], kind: tuple[str, tuple[str, str]]
) -> dict[tuple[Any, ...], tuple[FormatProfile, FormatProfile]]:
    dimension, (a, b) = kind
    side = {}
    for p in profiles:
        side[(_pair_key(p, dimension), p.layout if dimension == "layout" else p.target)] = p
    return {
        key: (side[(key, a)], side[(key, b)])
        for key in dict.fromkeys(k for k, _ in side)
        if (key, a) in side and (key, b) in side
    }


def _unpaired(profiles: Sequence[FormatProfile], kind: tuple[str, tuple[str, str]] | None) -> list[str]:
    if kind is None:
        return []
    paired = {id(p) for pair in _pairs(profiles, kind).values() for p in pair}
    return [f"{p.model} {p.layout} {p.target} b{p.batch}" for p in profiles if id(p) not in paired]


def renamers(source: ModelSource) -> dict[str, Renamer]:
    """Per layout, the renamer into the merged network's module names (identity when the source
    has no module to read the merge from, such as an ONNX file). Any layout's source of a model
    serves: both modules are built from it."""
    same: Renamer = _same
    if not source.has_module:
        return {"kept": same, "merged": same}
    kept = source.module_for("kept")
    if isinstance(kept, FusionNet):
        return {"kept": builtin_renamer(kept), "merged": same}
    kept_to_merged, canonical = graph_renamers(source.module_for("merged"))
    return {"kept": kept_to_merged, "merged": canonical}


def _same(path: str) -> str:
    return path
