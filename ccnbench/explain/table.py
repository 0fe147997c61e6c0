"""Profiles -> one table: the model's modules as rows, formats as columns.

Each event is charged to the row of the modules it covers. Modules that one runtime ran as one
fused unit share one row in every column (the table never guesses a split), so the rows are the
connected groups of modules over all columns' events. Events of no module are ``outside
layers``; units a runtime added are a row of their own per op type, which the other formats
simply lack. Kept and merged profiles meet through the merge's own correspondence: each column's
module paths are renamed into the merged network's names (``models.correspondence``) before
rows are formed, and labelled with the kept names they came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from ccnbench.explain.records import ADDED, OUTSIDE, Cell, FormatProfile, LayerEvent, LayerTable, Row
from ccnbench.roofline.layer_costs import ModuleCosts
from ccnbench.roofline.reading import Reading, read
from ccnbench.roofline.roofs import RoofPair

Renamer = Callable[[str], str]


def _identity(path: str) -> str:
    return path


def layer_table(
    profiles: Sequence[FormatProfile],
    title: str,
    renames: Sequence[Renamer] | None = None,
    compare: bool = False,
    displays: Sequence[Renamer] | None = None,
    costs: Sequence[ModuleCosts | None] | None = None,
    roofs: Sequence[RoofPair | None] | None = None,
) -> LayerTable:
    """The table of ``profiles`` (one column each); ``compare`` (two columns) sorts the rows by
    how much of the difference between them each explains. ``renames`` put every column's module
    paths into one namespace (rows are formed there); ``displays`` name them in the labels
    (default: the renamed paths; a kept column shows its own names). ``costs`` (the layers'
    FLOPs and bytes, per column in its own module paths) and ``roofs`` add each cell's roofline
    reading."""
    renames = list(renames or [_identity] * len(profiles))
    displays = list(displays or renames)
    groups = _Groups()
    keyed: list[list[tuple[str, LayerEvent, tuple[str, ...]]]] = []
    for profile, rename in zip(profiles, renames):
        column = []
        for event in profile.events:
            paths = tuple(dict.fromkeys(rename(m) for m in event.modules))
            key = row_key(event, paths)
            if paths and not event.added and event.name != OUTSIDE:
                groups.join(paths)
            column.append((key, event, paths))
        keyed.append(column)
    rows: dict[str, dict[int, list[LayerEvent]]] = {}
    originals: dict[str, list[dict[str, list[str]]]] = {}
    for i, column in enumerate(keyed):
        for key, event, paths in column:
            row = key if key is not None else groups.root(paths[0])
            rows.setdefault(row, {}).setdefault(i, []).append(event)
            names = originals.setdefault(row, [{} for _ in profiles])[i]
            for module in event.modules:
                names.setdefault(renames[i](module), []).append(displays[i](module))
    totals = tuple(p.profiled_us for p in profiles)
    costs = list(costs or [None] * len(profiles))
    roofs = list(roofs or [None] * len(profiles))
    own_ops = _own_ops_paths(groups.paths())
    built = [
        Row(
            key,
            _label(key, groups.members(key), originals[key], own_ops),
            tuple(_cell(by_column.get(i), totals[i], costs[i], roofs[i]) for i in range(len(profiles))),
            tuple(tuple(dict.fromkeys(m for ms in o.values() for m in ms)) for o in originals[key]),
        )
        for key, by_column in rows.items()
    ]
    if compare:
        built.sort(key=lambda r: -abs(r.us(1) - r.us(0)))
    else:
        built.sort(key=lambda r: (r.key == OUTSIDE, r.key.startswith(ADDED)))
    notes = tuple(dict.fromkeys(p.note for p in profiles if p.note))
    calls = tuple(_call_reading(p, c, r) for p, c, r in zip(profiles, costs, roofs))
    return LayerTable(
        title, tuple(p.label for p in profiles), tuple(built), totals, compare, notes, tuple(roofs), calls
    )


def row_key(event: LayerEvent, paths: tuple[str, ...]) -> str | None:
    """The row of a non-module event; None for a module's, whose row is its group's."""
    if event.name == OUTSIDE or (not paths and not event.added):
        return OUTSIDE
    if event.added:
        return ADDED + (event.op or "?")
    return None


def _cell(
    events: list[LayerEvent] | None, total: float, costs: ModuleCosts | None, roofs: RoofPair | None
) -> Cell | None:
    if not events:
        return None
    us = sum(e.us for e in events)
    kernels = tuple(dict.fromkeys(e.kernel for e in sorted(events, key=lambda e: -e.us) if e.kernel))
    fused = any(len(e.modules) > 1 for e in events)
    cell = Cell(us, us / total if total else 0.0, kernels, len(events), fused)
    # Runtime-added work (Reorders) and time outside layers have no layer to count.
    traffic = costs.of(m for e in events if not e.added for m in e.modules) if costs else None
    if traffic is None:
        return cell
    reading = None
    if roofs is not None and roofs.complete:
        reading = read(traffic, us / 1e6, roofs.compute.rate, roofs.memory.rate)  # type: ignore[union-attr]
    return replace(cell, flops=traffic.flops, bytes=traffic.bytes, reading=reading)


def _call_reading(
    profile: FormatProfile, costs: ModuleCosts | None, roofs: RoofPair | None
) -> Reading | None:
    """The fastest unprofiled call against the whole model's traffic: the format's point."""
    if costs is None or roofs is None or not roofs.complete or not profile.overhead.fastest_us:
        return None
    seconds = profile.overhead.fastest_us / 1e6
    return read(costs.total(), seconds, roofs.compute.rate, roofs.memory.rate)  # type: ignore[union-attr]


def _own_ops_paths(paths: set[str]) -> set[str]:
    """Paths whose rows are a module's own ops (a parent of other rows, or the root)."""
    return {p for p in paths if p == "" or any(q.startswith(p + ".") for q in paths)}


def _label(key: str, members: list[str], originals: list[dict[str, list[str]]], own_ops: set[str]) -> str:
    """The row's modules as each column names them: ``extractors.{0,1,2}.0.conv → extractor.0.conv``."""
    if key == OUTSIDE or key.startswith(ADDED):
        return key
    sides = []
    for column in originals:
        parts = []
        for path in members:
            names = column.get(path)
            if names:
                text = collapse(names)
                parts.append(f"{text or 'model'} (own ops)" if path in own_ops else text)
        text = collapse(parts, in_order=True)
        if parts and text not in sides:
            sides.append(text)
    return " → ".join(sides)


def collapse(names: Sequence[str], in_order: bool = False) -> str:
    """``extractors.0.0.conv``, ``extractors.1.0.conv`` -> ``extractors.{0,1}.0.conv`` (names
    sorted naturally unless ``in_order``). Names of one depth that differ in one place collapse;
    the groups that remain are joined by +."""
    unique = list(dict.fromkeys(names)) if in_order else sorted(dict.fromkeys(names), key=_natural)
    by_depth: dict[int, list[list[str]]] = {}
    for name in unique:
        by_depth.setdefault(name.count("."), []).append(name.split("."))
    return " + ".join(_collapse_one_place(parts) for parts in by_depth.values())


def _collapse_one_place(parts: list[list[str]]) -> str:
    differ = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
    if len(differ) > 1:
        return " + ".join(".".join(p) for p in parts)
    if not differ:
        return ".".join(parts[0])
    i = differ[0]
    varied = "{" + ",".join(dict.fromkeys(p[i] for p in parts)) + "}"
    return ".".join([*parts[0][:i], varied, *parts[0][i + 1 :]])


def _natural(name: str) -> list[tuple[int, str]]:
    """Sort key putting ``layer2`` before ``layer10`` and branch 0 before branch 2."""
    return [(int(t), "") if t.isdigit() else (0, t) for t in re.split(r"(\d+)", name)]


class _Groups:
    """Union-find over module paths, remembering the order paths were first seen."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def join(self, paths: Sequence[str]) -> None:
        for path in paths:
            self._parent.setdefault(path, path)
        first = self.root(paths[0])
        for path in paths[1:]:
            other = self.root(path)
            if other != first:
                # The earlier-seen path stays the root so a row keeps its first module's place.
                keep, drop = sorted((first, other), key=list(self._parent).index)
                self._parent[drop] = keep
                first = keep

    def root(self, path: str) -> str:
        while self._parent.setdefault(path, path) != path:
            path = self._parent[path]
        return path

    def members(self, root: str) -> list[str]:
        return [p for p in self._parent if self.root(p) == root]

    def paths(self) -> set[str]:
        return set(self._parent)
