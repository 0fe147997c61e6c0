"""The parts of a sharded sweep (``bench --shard K/N``) put back together, and runs loaded with them.

Which groups go to which part is planning (``ccnbench.run.plan.select``). Each part records its
shard in the run's configuration; ``load_runs`` (what ``report``, ``compare`` and ``recommend``
read) hands the runs to ``combine``, which turns the N run directories back into one run,
refusing parts that are missing, repeated, or from another configuration or commit.

In a CI matrix each part may run on its own runner, another CPU. Such parts still combine: every
contest lies within one part, so agreement, crashes and the ratios within a contest (``recommend``)
hold. But no other run is like with like to all of them, so the combined run records which
fingerprint fields its parts differ in and each part's machine (``mixed_machines``), and
``compare`` judges no speed with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ccnbench import environment
from ccnbench.errors import ResultsError, UsageError
from ccnbench.results import RunResult, load_many, results_path

#: The key of a combined run's config that holds its ``MixedMachines`` (only where its parts' machines differ).
MIXED_MACHINES = "shard_machines"


@dataclass(frozen=True)
class MixedMachines:
    """A combined run whose parts were measured on different machines or software: the fingerprint
    fields they differ in (``environment.differing_fields``, as ``compare`` names them between two
    runs) and, per part, its values of those fields."""

    fields: tuple[str, ...]
    shards: tuple[tuple[str, str], ...]  # (the part's run id, its machine in words)

    def reason(self) -> str:
        """'shards were measured on different machines (differ in: cpu, cpu_model_number)'."""
        machines = set(self.fields) & set(environment.MACHINE_FIELDS)
        how = "on different machines" if machines else "with different software"
        return f"shards were measured {how} (differ in: {', '.join(self.fields)})"

    def each(self) -> str:
        """Which part had which machine: '`s-1`: cpu AMD EPYC, machine id 4762..; `s-2`: ...'."""
        return "; ".join(f"`{run_id}`: {machine}" for run_id, machine in self.shards)


def mixed_machines(run: RunResult) -> MixedMachines | None:
    """Where ``combine`` found the run's parts on different machines or software, which; None for
    parts from one machine and for a run that was not split."""
    stored = run.config.get(MIXED_MACHINES)
    if not stored:
        return None
    return MixedMachines(tuple(stored["fields"]), tuple((str(r), str(m)) for r, m in stored["shards"]))


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four parts."""
    k, sep, n = str(text).partition("/")
    try:
        shard = (int(k), int(n)) if sep else None
    except ValueError:
        shard = None
    if shard is None or not 1 <= shard[0] <= shard[1]:
        raise UsageError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
    return shard


def load_runs(paths: Iterable[Path | str]) -> list[RunResult]:
    """What ``report``, ``compare`` and ``recommend`` read: runs, with the shards of one sweep
    (``bench --shard K/N``) combined into one run.

    A path is a run directory, a results.json, or a directory holding run directories (the
    shards of a CI matrix, downloaded side by side). Missing, repeated or mismatched shards are
    a ResultsError.
    """
    found: list[Path | str] = []
    for p in paths:
        path = Path(p)
        inner = sorted(d for d in path.iterdir() if results_path(d).is_file()) if path.is_dir() else []
        found += inner if inner and not results_path(path).is_file() else [path]
    return combine(load_many(found))


def combine(runs: Sequence[RunResult]) -> list[RunResult]:
    """Runs with the shards of one sweep merged into one run; unsharded runs pass through."""
    out: list[RunResult] = []
    sweeps: dict[str, list[RunResult]] = {}
    for run in runs:
        if run.config.get("shard"):
            sweeps.setdefault(run.config.get("name", "?"), []).append(run)
        else:
            out.append(run)
    for parts in sweeps.values():
        out.append(_merge(parts))
    return out


def _merge(parts: list[RunResult]) -> RunResult:
    shards = [_shard_of(p) for p in parts]
    n = shards[0][1]
    name = parts[0].config.get("name", "?")
    base = _without_shard(parts[0].config)
    for part, (k, count) in zip(parts, shards):
        if count != n or _without_shard(part.config) != base:
            raise ResultsError(
                f"{part.run_id} (shard {k}/{count}) is not a part of the same sweep as {parts[0].run_id}: "
                "their configurations differ"
            )
        if part.environment.git_commit != parts[0].environment.git_commit:
            raise ResultsError(
                f"shards of {name!r} come from different commits ({parts[0].environment.git_commit} and "
                f"{part.environment.git_commit}): rerun them from one commit"
            )
    seen = [k for k, _ in shards]
    repeated = sorted({k for k in seen if seen.count(k) > 1})
    if repeated:
        raise ResultsError(f"shard {repeated[0]}/{n} of {name!r} is given more than once")
    missing = sorted(set(range(1, n + 1)) - set(seen))
    if missing:
        listed = ", ".join(f"{k}/{n}" for k in missing)
        raise ResultsError(f"{name!r} is split in {n} shards; shard(s) {listed} are missing")
    ordered = [p for _, p in sorted(zip(seen, parts), key=lambda kp: kp[0])]
    cases = [c for p in ordered for c in p.cases]
    if len({c.key for c in cases}) != len(cases):
        raise ResultsError(f"the shards of {name!r} overlap: a case appears in two of them")
    config = {**base, "shards": [p.run_id for p in ordered]}
    mixed = _mixed(ordered)
    if mixed is not None:
        config[MIXED_MACHINES] = {"fields": list(mixed.fields), "shards": [list(s) for s in mixed.shards]}
    return replace(
        ordered[0],
        run_id=f"{ordered[0].run_id}+{n - 1} shards" if n > 1 else ordered[0].run_id,
        config=config,
        cases=tuple(cases),
        complete=all(p.complete for p in ordered),
    )


def _mixed(parts: list[RunResult]) -> MixedMachines | None:
    """The fields the parts' fingerprints differ in (each against the first's), in the fingerprint's
    order, with each part's values of them; None where they all match."""
    first = parts[0].environment
    found = {name for p in parts[1:] for name in environment.differing_fields(first, p.environment)}
    fields = [n for n in environment.MACHINE_FIELDS + environment.SOFTWARE_FIELDS if n in found]
    if not fields:
        return None
    described = []
    for part in parts:
        env = part.environment
        values = ", ".join(f"{name} {environment.field_text(env, name)}" for name in fields)
        described.append((part.run_id, f"{values}, machine id {env.machine_id or '?'}"))
    return MixedMachines(tuple(fields), tuple(described))


def _shard_of(run: RunResult) -> tuple[int, int]:
    try:
        return parse_shard(run.config["shard"])
    except Exception as exc:
        raise ResultsError(
            f"{run.run_id}: its stored shard {run.config.get('shard')!r} is unreadable"
        ) from exc


def _without_shard(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "shard"}
