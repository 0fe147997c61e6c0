"""Split a sweep across machines (``bench --shard K/N``) and put the parts back together.

The unit of splitting is the *contest*: one model (label and digest) at one precision on one
kind of device. All layouts and targets of a contest stay in one part, because they are timed
against each other in one process. Contests go to parts by expected cost, largest first, each
to the part with the least so far: deterministic for a given configuration, and balanced.

Each part records its shard in the run's configuration; ``combine`` (called by ``report``,
``compare`` and ``recommend`` through ``results.load_runs``) turns the N run directories back
into one run, refusing parts that are missing, repeated, or from another configuration or commit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ccnbench.contest import contest_key
from ccnbench.errors import ResultsError

if TYPE_CHECKING:
    from ccnbench.execute import CaseGroup
    from ccnbench.results import RunResult

# Rough relative cost of preparing and timing one case on a target's backend: compilers and
# engine builders spend far longer before the first measurement than eager or ONNX Runtime.
_BACKEND_WEIGHT = {"compile": 4.0, "tensorrt": 6.0, "aoti": 6.0}


def expected_cost(group: CaseGroup) -> float:
    """A deterministic estimate from what the group is, without building anything."""
    voxels = math.prod(group.source.input_shape) * group.source.num_inputs
    weight = _BACKEND_WEIGHT.get(group.target.backend, 1.0)
    return weight * (1.0 + voxels * sum(group.batches) / 1e5)


def assign(groups: Sequence[CaseGroup], parts: int) -> dict[tuple[str, ...], int]:
    """Contest -> part index (0-based): largest expected cost first, each to the lightest part."""
    costs: dict[tuple[str, ...], float] = {}
    for g in groups:
        costs[contest_key(g)] = costs.get(contest_key(g), 0.0) + expected_cost(g)
    loads = [0.0] * parts
    owner = {}
    for key in sorted(costs, key=lambda k: (-costs[k], k)):
        part = min(range(parts), key=lambda i: (loads[i], i))
        owner[key] = part
        loads[part] += costs[key]
    return owner


def select(groups: Sequence[CaseGroup], k: int, n: int) -> list[CaseGroup]:
    """The groups of part ``k`` of ``n`` (1-based), in their original order."""
    owner = assign(groups, n)
    return [g for g in groups if owner[contest_key(g)] == k - 1]


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
    return replace(
        ordered[0],
        run_id=f"{ordered[0].run_id}+{n - 1} shards" if n > 1 else ordered[0].run_id,
        config={**base, "shards": [p.run_id for p in ordered]},
        cases=tuple(cases),
        complete=all(p.complete for p in ordered),
    )


def _shard_of(run: RunResult) -> tuple[int, int]:
    from ccnbench.config import parse_shard

    try:
        return parse_shard(run.config["shard"])
    except Exception as exc:
        raise ResultsError(
            f"{run.run_id}: its stored shard {run.config.get('shard')!r} is unreadable"
        ) from exc


def _without_shard(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "shard"}
