"""The CI regression gate, like with like: base and head measured on this machine in this job.

Ratios between runtimes differ by CPU (ONNX Runtime over eager PyTorch: 0.37 on a Xeon, 0.49 on
an EPYC), so a baseline measured on another machine cannot judge speed. Like asv's
``continuous``, this script measures the base commit (default ``HEAD^``) with its own code and
the head with its own, on this machine, in ABBA order (base, head, head, base) so that drift
hits both, and compares them with the head's ``ccnbench compare`` (--force-speed: both sides
were measured here, although the base's older code may not record the machine fingerprint).

Cost: one base run and one head run of the ci-quick sweep (2 processes each). Only when that
first pair shows a speed regression, or TARGET_CASES cases of one target slower beyond the
threshold (within their noise: on a busy host too few processes stay calm to resolve them one by
one), is a second pair measured; a regression then stands only if
all four runs together (4 processes a side) find it *and* either each pair on its own resolves it
or at least TARGET_CASES cases of its target are slower beyond the threshold in every pair (a
target-wide slow-down), so neither one unlucky process nor one run or case disturbed by other
jobs can fail the gate alone.

When the base cannot be measured (no parent commit, the base's code fails), or with
``CCNBENCH_GATE_BASE=baseline``, the committed baselines under results/baseline-ci/ are used: one
whose machine and software fingerprint matches this run judges speed; otherwise only agreement
failures, crashes and missing cases are judged, and the gate says speed was not judged.

Environment: CCNBENCH_GATE_BASE (a commit, default HEAD^; ``baseline``: committed baselines
only), CCNBENCH_GATE_THRESHOLD (default 15%), CCNBENCH_GATE_OUT (keep the runs there; default a
temporary directory), CCNBENCH_GATE_HEAD_PATH (test hook: a directory put first on the head
runs' PYTHONPATH only, e.g. holding a sitecustomize.py that slows a backend down; see
tests/fixtures/slowdown/). Exit code: 0 pass, 1 fail.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ccnbench import results  # noqa: E402
from ccnbench.answers import compare as comparing  # noqa: E402
from ccnbench.answers import compare_sides  # noqa: E402
from ccnbench.measure.timing import Block, LatencyStats  # noqa: E402
from ccnbench.results import RunResult  # noqa: E402
from ccnbench.run import contest  # noqa: E402

SWEEP = "ci-quick"
TARGET_CASES = 3  # cases of one target slower in every pair that make a target-wide slow-down
BASELINES = ROOT / "results" / "baseline-ci"


def log(text: str) -> None:
    print(f"gate: {text}", flush=True)


def export_commit(commit: str, into: Path) -> str | None:
    """The commit's tree extracted into ``into``; its full hash, or None when it does not exist."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        return None
    sha = found.stdout.strip()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha], capture_output=True)
    if archive.returncode != 0:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return sha


def bench(code: Path, out: Path, artifacts: Path, extra_path: str = "") -> RunResult | None:
    """``ccnbench bench --config ci-quick`` with ``code``'s own package (only flags every version
    since contests has); the complete run, or None when it failed to produce one."""
    paths = [p for p in (extra_path, str(code), os.environ.get("PYTHONPATH", "")) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    args = ["bench", "--config", SWEEP, "--out", str(out), "--artifacts", str(artifacts), "--no-report"]
    start = time.monotonic()
    with (out.parent / f"{out.name}.log").open("w") as console:
        code_rc = subprocess.run(
            [sys.executable, "-m", "ccnbench", *args],
            cwd=code,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
        ).returncode
    try:
        run = results.load(out)
    except Exception as exc:  # any damage: this side is not measured
        log(f"{out.name}: no results ({type(exc).__name__}: {exc}; exit code {code_rc})")
        return None
    log(f"{out.name}: {len(run.cases)} cases in {time.monotonic() - start:.0f} s (exit code {code_rc})")
    return run if run.complete else None


def pool(runs: list[RunResult]) -> RunResult:
    """One run whose contest cases hold the processes of all ``runs`` (renumbered after each other)."""
    cases = {c.key: c for c in runs[0].cases}
    offset = 0
    for earlier, run in itertools.pairwise(runs):
        offset += 1 + max(
            (b.process for c in earlier.cases if c.latency for b in c.latency.blocks), default=0
        )
        for case in run.cases:
            if case.latency is not None and case.latency.blocks:
                blocks = [Block(b.process + offset, b.round, b.samples_ms) for b in case.latency.blocks]
                lat = case.latency
                renumbered = LatencyStats.from_blocks(
                    blocks, lat.batch, lat.clock, flops_per_sample=lat.flops_per_sample
                )
                case = replace(case, latency=renumbered)
            cases[case.key] = contest.merge_processes(cases.get(case.key), case)
    return replace(runs[0], cases=tuple(cases.values()))


def judge(base: RunResult, head: RunResult, threshold: float, force_speed: bool) -> comparing.Comparison:
    base_side = compare_sides.Side("ccnbench", compare_sides.rows_from_run(base), base.environment)
    head_side = compare_sides.Side("ccnbench", compare_sides.rows_from_run(head), head.environment)
    return comparing.compare(
        base_side.rows,
        head_side.rows,
        threshold=threshold,
        fail_on_missing=True,
        unlike=compare_sides.machine_differences(base_side, head_side),
        force_speed=force_speed,
    )


def needs_second_pair(first: comparing.Comparison, target_cases: int = TARGET_CASES) -> bool:
    """Whether the first pair calls for a second: it found a speed regression, or at least
    ``target_cases`` cases of one target are slower beyond the threshold though each is within
    its noise. On a busy host the calm-process rule can leave one or two processes a side, whose
    intervals are too wide to resolve a 1.3x slow-down case by case (2026-12-02, 2-core AMD EPYC:
    16 of 20 ONNX Runtime cases 18-61 % slower, none resolved, and the gate passed on one pair)."""
    if any(c.kind == "regression" for c in first.changes):
        return True
    return any(n >= target_cases for n in Counter(c.target for c in slower_beyond(first)).values())


def slower_beyond(comparison: comparing.Comparison) -> list[comparing.Change]:
    """The cases slower than the comparison's threshold, resolved or not."""
    return [c for c in comparison.changes if (c.slowdown or 0) > comparison.threshold]


def confirmed(
    pooled: comparing.Comparison, pairs: list[comparing.Comparison], target_cases: int = TARGET_CASES
) -> comparing.Comparison:
    """``pooled``, where a regression stands only if every pair on its own resolved it too, or if
    at least ``target_cases`` cases of its target are slower beyond the threshold in every pair
    (a target-wide slow-down). Load from other jobs moves one run's ratios, or one case's in every
    run; a real slow-down of a target moves many of its cases in every head run."""
    found = [{c.key for c in pair.changes if c.kind == "regression"} for pair in pairs]
    beyond = [{c.key for c in slower_beyond(p)} for p in pairs]
    wide = [c for c in pooled.changes if c.kind == "regression" and all(c.key in b for b in beyond)]
    per_target = Counter(c.target for c in wide)
    changes = []
    for change in pooled.changes:
        resolved = all(change.key in keys for keys in found)
        target_wide = change in wide and per_target[change.target] >= target_cases
        if change.kind == "regression" and not (resolved or target_wide):
            change = replace(
                change, kind="unchanged", detail=f"{change.detail} (not reproduced by every pair)"
            )
        changes.append(change)
    return replace(pooled, changes=tuple(changes))


def committed_baseline(head: RunResult) -> tuple[RunResult | None, str]:
    """The committed baseline whose machine and software match ``head`` (else any, to judge
    agreement and crashes only), and a sentence saying which."""
    found = []
    for path in sorted(BASELINES.glob("**/results.json")):
        try:
            found.append((path.parent, results.load(path)))
        except Exception as exc:
            log(f"{path}: unreadable baseline ({exc})")
    side = compare_sides.Side("ccnbench", {}, head.environment)
    for folder, run in found:
        if not compare_sides.machine_differences(compare_sides.Side("ccnbench", {}, run.environment), side):
            return run, f"committed baseline {folder.relative_to(ROOT)} (this machine and software)"
    if found:
        folder, run = found[0]
        return run, f"committed baseline {folder.relative_to(ROOT)} (another machine: speed not judged)"
    return None, "no committed baseline"


def main() -> int:
    threshold = comparing.parse_threshold(os.environ.get("CCNBENCH_GATE_THRESHOLD", "15%"))
    base_ref = os.environ.get("CCNBENCH_GATE_BASE", "HEAD^")
    head_path = os.environ.get("CCNBENCH_GATE_HEAD_PATH", "")
    head_path = str(Path(head_path).resolve()) if head_path else ""
    keep = os.environ.get("CCNBENCH_GATE_OUT")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ccnbench-gate-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    base_code = work / "base-code"
    sha = None if base_ref == "baseline" else export_commit(base_ref, base_code)
    log(f"base {base_ref}: " + (sha[:12] if sha else "not measured"))
    if head_path:
        log(f"head runs get {head_path} first on PYTHONPATH (test hook)")

    def measure(side: str, number: int) -> RunResult | None:
        code = base_code if side == "base" else ROOT
        extra = head_path if side == "head" else ""
        return bench(code, work / f"{side}-{number}", work / f"artifacts-{side}", extra)

    bases: list[RunResult] = []
    heads: list[RunResult] = []
    first_base = measure("base", 1) if sha else None
    first_head = measure("head", 1)
    if first_head is None:
        log("FAIL: the head's sweep did not complete")
        return 1
    heads.append(first_head)
    if first_base is not None:
        bases.append(first_base)
        result = judge(first_base, first_head, threshold, force_speed=True)
        if needs_second_pair(result):
            log(
                "first pair shows a regression or a target-wide slow-down: measuring a second pair to confirm"
            )
            second_head, second_base = measure("head", 2), measure("base", 2)
            heads += [second_head] if second_head else []
            bases += [second_base] if second_base else []
            pairs = [result]
            if second_head and second_base:
                pairs.append(judge(second_base, second_head, threshold, force_speed=True))
            result = confirmed(judge(pool(bases), pool(heads), threshold, force_speed=True), pairs)
        against = f"base {sha[:12] if sha else base_ref} measured here ({len(bases)} base runs, {len(heads)} head runs)"
        if result.unlike:
            log(
                "base and head were both measured on this machine in this job: speed is judged (--force-speed)"
            )
    else:
        baseline, against = committed_baseline(first_head)
        if baseline is None:
            log("FAIL: the base could not be measured and there is no committed baseline")
            return 1
        result = judge(baseline, first_head, threshold, force_speed=False)
    print(result.markdown(), end="")
    verdict = "FAIL" if result.failed else "pass"
    speed = "speed judged" if result.speed_judged else "speed NOT judged (no baseline from this machine)"
    log(f"{verdict} against {against}, {speed}, in {time.monotonic() - start:.0f} s; runs in {work}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
