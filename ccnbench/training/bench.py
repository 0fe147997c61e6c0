"""The training-step benchmark: one optimisation step of each form of a variant, kept vs merged.

It runs the contest protocol (``ccnbench.run.contest``), not a copy of it, so a training ratio and
an inference ratio are measured the same way: in one process, every form of a variant on one
target is built and warmed, then timed by ``contest.interleave`` (one block each per round, a
seeded order that changes every round, ``contest.settle`` before each block, no garbage
collection inside blocks) until every ratio to its kept partner has a within-process interval
inside the target width or the time is spent; the whole thing runs in several fresh processes
(``python -m ccnbench.training.bench``), and the blocks are turned into paired ratios with
between-process intervals by ``ccnbench.answers.stats``.

A member is one form with one loss: ``kept``, ``merged`` (the deployment merge, trained as it
is), ``merged-train`` (the training-equivalent form where it differs from the deployment merge)
and, for decision fusion, ``kept-members`` / ``unfolded-members`` (one loss per member). On
``compile`` targets the module is ``torch.compile``'d (forward and backward); the loss and the
optimizer step stay eager, as most training loops have them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ccnbench import fileio
from ccnbench.answers import stats
from ccnbench.backends.base import Runner, Target
from ccnbench.errors import CcnbenchError, UsageError, one_line
from ccnbench.measure.timing import Block, LatencyStats, Protocol, warm_up
from ccnbench.models import build_kept, merge
from ccnbench.models.spec import ModelSpec, spec_from_preset
from ccnbench.run import worker
from ccnbench.run.contest import interleave
from ccnbench.training.equivalent import training_form
from ccnbench.training.step import OPTIMIZERS, MemberLogits, make_batch, make_optimizer, step

TARGETS = ("torch:cpu", "compile:cpu", "torch:cuda", "compile:cuda")
DEFAULT_VARIANTS = ("feature", "model", "decision", "multitask")  # early fusion has no branches to merge
# Shorter than an inference contest's (timing.DEFAULT): every (variant, target) pair is a contest
# of its own, in every process, and the default run must stay within minutes. One warm-up step
# allocates the gradients and the optimizer's state (and compiles, on compile targets), and its
# time spares the first round a discarded call (``run_contest``). Three rounds: at batch 32 a step
# takes ~0.45 s on 2 cores, so each round of the 12 members costs ~5 s per target and process, and
# the interval's width comes from the processes (between-process t-interval), not from more
# rounds inside one.
PROTOCOL = Protocol(
    warmup_iterations=1,
    warmup_seconds=0.0,
    block_seconds=0.05,
    settle_seconds=0.2,
    min_rounds=3,
    contest_seconds=1.0,
    target_width=0.03,
)


@dataclass(frozen=True)
class Member:
    """One form of a variant with one loss, and the kept member its ratio is taken against."""

    name: str
    form: str  # kept, deployment or training
    loss_mode: str
    partner: str | None


def members_of(variant: str) -> tuple[Member, ...]:
    kept = Member("kept", "kept", "fused", None)
    merged = Member("merged", "deployment", "fused", "kept")
    if variant in ("feature", "multitask"):
        return (kept, merged, Member("merged-train", "training", "fused", "kept"))
    if variant == "decision":
        return (kept, merged, Member("kept-members", "kept", "members", None),
                Member("unfolded-members", "training", "members", "kept-members"))  # fmt: skip
    return (kept, merged)


@dataclass(frozen=True)
class BenchConfig:
    """What to time; by default the small preset, batch 8 and 32, torch and compile on the CPU."""

    preset: str = "small"
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    batches: tuple[int, ...] = (8, 32)
    targets: tuple[str, ...] = ("torch:cpu", "compile:cpu")
    processes: int = 3
    protocol: Protocol = PROTOCOL  # warm-up and rounds, the fields a contest reads
    optimizer: str = "sgd"
    branches: int | None = None
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for target in self.targets:
            if target not in TARGETS:
                raise UsageError(f"training target {target!r}: choose from {', '.join(TARGETS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.processes < 1 or self.protocol.min_rounds < 3:
            raise UsageError("a training benchmark needs >= 1 process and >= 3 rounds")

    def specs(self) -> list[ModelSpec]:
        return [
            spec_from_preset(self.preset, v, branches=self.branches, seed=self.seed) for v in self.variants
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchConfig:
        data = json.loads(text)
        protocol = Protocol(**data.pop("protocol"))
        return cls(protocol=protocol, **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class _StepRunner(Runner):
    """What the timing loops need of a member: a target (which clock) and a call."""

    call: Callable[[], object] = field(default=lambda: None)

    def infer(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        self.call()
        return ()


def _available(target: Target) -> str | None:
    if target.is_cuda and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _build_member(
    member: Member, spec: ModelSpec, target: Target, config: BenchConfig
) -> dict[int, _StepRunner]:
    """The member's module in train mode on the target's device and its optimizer, with one fixed
    batch per batch size: a runner per batch size, all stepping the same module."""
    kept = build_kept(spec).train()
    module = {"kept": lambda m: m, "deployment": merge, "training": training_form}[member.form](kept)
    if member.loss_mode == "members":
        module = MemberLogits(module)  # so that a compiled step compiles the members' logits too
    module = module.to(target.device_kind).train()
    # A small learning rate: hundreds of steps on one batch must not diverge into NaN arithmetic.
    opt = make_optimizer(config.optimizer, module.parameters(), lr=1e-3)
    # One static graph per batch size, as a training loop at one batch size compiles it. A batch
    # marked dynamic would not give one graph for all sizes either (choosing the convolution's
    # backend asks whether the batch is >= 16, so a batch-8 graph is guarded to 2-15), and its
    # kernels are slower: kept steps, fastest of 8 interleaved in one process, dynamic over static
    # 1.12 (feature, batch 8), 1.05 (feature, 32), 1.09 (model, 8), 1.11 (model, 32), on a 2-core
    # AMD EPYC. Compiling costs about the same: 252 s dynamic, 270 s static for every form, cold.
    model = torch.compile(module, dynamic=False) if target.backend == "compile" else module
    runners = {}
    for size in config.batches:
        batch = make_batch(spec, size, config.seed, device=target.device_kind)
        runners[size] = _StepRunner(
            target, ("loss",), call=partial(step, model, batch, opt, member.loss_mode)
        )
    return runners


def run_contest(
    spec: ModelSpec, target: Target, config: BenchConfig, process: int
) -> dict[int, dict[str, Any]]:
    """One process's contest of every member of ``spec`` on ``target``: per batch size, blocks or a reason."""
    reason = _available(target)
    if reason:
        return {batch: {"unavailable": reason} for batch in config.batches}
    members = members_of(spec.variant)
    runners, build_s = [], {}
    warm_ms: dict[tuple[str, int], float] = {}
    for member in members:
        start = time.perf_counter()
        by_batch = _build_member(member, spec, target, config)
        for batch, runner in by_batch.items():
            began = time.perf_counter()
            calls = warm_up(runner.call, runner, config.protocol)  # the first calls compile (compile targets)
            warm_ms[member.name, batch] = (time.perf_counter() - began) * 1e3 / calls
        build_s[member.name] = round(time.perf_counter() - start, 3)
        runners.append(by_batch)
    index = {m.name: i for i, m in enumerate(members)}
    pairs = [(i, index[m.partner]) for i, m in enumerate(members) if m.partner]
    records = {}
    for batch in config.batches:
        steps = [r[batch] for r in runners]
        # The warm-up step's time stands in for a first block's discarded call: a step that fills
        # the block (all of them at the small preset: >= 100 ms) is timed once per block from the
        # first round, as in later rounds, which saves one step per member and batch (the default
        # run, warm, back to back: 317 s before, 274 s after, 2-core AMD EPYC). A compiling warm-up
        # always seems to fill it; a shorter compiled step's block still lasts block_seconds, and its
        # first call (after another member's) is not its fastest.
        known = [warm_ms[m.name, batch] for m in members]
        blocks = interleave([r.call for r in steps], steps, pairs, config.protocol, batch, process,
                            known_ms=known)  # fmt: skip
        records[batch] = {
            "build_seconds": build_s,
            "blocks": {m.name: [asdict(b) for b in bs] for m, bs in zip(members, blocks)},
        }
    return records


def run_process(
    config: BenchConfig, process: int, on_contest: Callable[[str, bool], None] | None = None
) -> list[dict[str, Any]]:
    """Every contest of ``config`` in this process: one record per (variant, target, batch).
    ``on_contest(what, done)`` as each contest starts and ends ("feature-n3@small on compile:cpu")."""
    if config.threads:
        torch.set_num_threads(config.threads)
    records = []
    for spec in config.specs():
        for text in config.targets:
            keys = {
                b: {"label": spec.label, "variant": spec.variant, "target": text, "batch": b}
                for b in config.batches
            }
            what = f"{spec.label} on {text}"
            if on_contest:
                on_contest(what, False)
            try:
                contest = run_contest(spec, Target.parse(text), config, process)
                records.extend({**keys[b], **contest[b]} for b in config.batches)
            except Exception as exc:  # one failing contest must not lose the others' figures
                records.extend({**keys[b], "failed": one_line(exc)} for b in config.batches)
            if text.startswith("compile"):
                torch._dynamo.reset()  # one contest's compiled graphs must not pile up in the next
            if on_contest:
                on_contest(what, True)
    return records


@dataclass(frozen=True)
class MemberResult:
    """One member of one contest, across processes: its step latency and its ratio to the kept partner."""

    label: str
    target: str
    batch: int
    member: str
    partner: str | None
    latency: LatencyStats | None
    ratio: stats.Interval | None  # member over partner, paired per (process, round)
    build_seconds: tuple[float, ...] = ()
    note: str = ""

    def median_interval(self) -> stats.Interval | None:
        return stats.median_interval(self.latency)

    def to_dict(self) -> dict[str, Any]:
        median = self.median_interval()
        return {
            "label": self.label,
            "target": self.target,
            "batch": self.batch,
            "member": self.member,
            "partner": self.partner,
            "median_ms": median.to_dict() if median else None,
            "ratio": self.ratio.to_dict() if self.ratio else None,
            "verdict": stats.verdict(self.ratio) if self.partner else None,
            "build_seconds": list(self.build_seconds),
            "note": self.note,
        }


def summarize(records: Sequence[dict[str, Any]]) -> list[MemberResult]:
    """Records of every process (``run_process``) -> one result per member of each contest."""
    contests: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for record in records:
        contests.setdefault((record["label"], record["target"], record["batch"]), []).append(record)
    results = []
    for (label, target, batch), parts in contests.items():
        variant = parts[0]["variant"]
        problem = next((p.get("unavailable") or p.get("failed") for p in parts if "blocks" not in p), "")
        latencies: dict[str, LatencyStats | None] = {}
        for member in members_of(variant):
            blocks = [Block(**{**b, "samples_ms": tuple(b["samples_ms"]), "host_ms": tuple(b["host_ms"])})
                      for p in parts if "blocks" in p for b in p["blocks"][member.name]]  # fmt: skip
            clock = "cuda_events" if Target.parse(target).is_cuda else "perf_counter"
            latencies[member.name] = LatencyStats.from_blocks(blocks, batch, clock) if blocks else None
        for member in members_of(variant):
            partner = latencies.get(member.partner) if member.partner else None
            ratio = stats.paired_ratio(latencies[member.name], partner) if member.partner else None
            built = tuple(p["build_seconds"][member.name] for p in parts if "build_seconds" in p)
            results.append(MemberResult(label, target, batch, member.name, member.partner,
                                        latencies[member.name], ratio, built, problem))  # fmt: skip
    return results


def run(config: BenchConfig, on_contest: Callable[[int, str, bool], None] | None = None,
        timeout_s: float = 1800.0) -> list[MemberResult]:  # fmt: skip
    """The benchmark: ``config.processes`` fresh processes, each running every contest once.
    ``on_contest(process, what, done)`` as a process starts and ends each contest: the first
    process of a cold run spends minutes compiling, and a user should see where."""
    records: list[dict[str, Any]] = []
    for process in range(config.processes):
        report = partial(on_contest, process) if on_contest else None
        records.extend(_run_worker(config, process, report, timeout_s))
    return summarize(records)


def _run_worker(
    config: BenchConfig, process: int, on_contest: Callable[[str, bool], None] | None, timeout_s: float
) -> list[dict[str, Any]]:
    """One fresh worker process: its progress lines as they come, then its records (its last line)."""
    command = [sys.executable, "-m", "ccnbench.training.bench", config.to_json(), str(process)]
    records: list[dict[str, Any]] | None = None
    expired = threading.Event()
    # stderr to a file, not a pipe: nobody reads it until the end, and a full pipe would stall the worker
    with tempfile.TemporaryFile("w+") as errors:
        # Its own process group, killed whole (``worker.kill``, as a sweep's workers are): Inductor
        # compiles in child processes that must not outlive a worker past its time.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, start_new_session=True)
        timer = threading.Timer(timeout_s, lambda: (expired.set(), worker.kill(proc)))
        timer.start()
        try:
            for line in proc.stdout or ():
                message = _message(line)
                if isinstance(message, list):
                    records = message
                elif isinstance(message, dict) and "contest" in message and on_contest:
                    on_contest(str(message["contest"]), bool(message["done"]))
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # interrupted while reading: leave no worker behind
                worker.kill(proc)
        if expired.is_set():
            raise CcnbenchError(f"training benchmark process {process} ran past {timeout_s:.0f} s")
        errors.seek(0)
        tail = errors.read().strip().splitlines()[-1:] or ["no output"]
    if code != 0:
        raise CcnbenchError(f"training benchmark process {process} failed: {one_line(tail[0])}")
    if records is None:
        raise CcnbenchError(f"training benchmark process {process} printed no results: {one_line(tail[0])}")
    return records


def _message(line: bytes) -> object:
    """A worker's stdout line: a progress message (dict), its records (list), or anything else a
    library printed (None)."""
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None


# A results file of its own, not ``ccnbench.results``: a training step is no inference case, and
# ``compare`` and ``report`` do not read it.
SCHEMA = "ccnbench.train-bench"
SCHEMA_VERSION = 1


def write_results(path: Path, config: BenchConfig, results: Sequence[MemberResult]) -> None:
    """``path`` (atomically): what was asked (``config``), the machine it ran on and every member's
    result, as ``--json`` prints them."""
    from ccnbench.environment import collect

    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "environment": collect(threads=config.threads).to_dict(),
        "results": [r.to_dict() for r in results],
    }
    fileio.write_text(path, json.dumps(document, indent=1) + "\n")


def _main(argv: Sequence[str]) -> int:
    """Worker entry point: ``python -m ccnbench.training.bench CONFIG_JSON PROCESS`` prints a JSON
    line as each contest starts and ends ({"contest": ..., "done": ...}), then its records (a list)."""
    config, process = BenchConfig.from_json(argv[0]), int(argv[1])

    def report(what: str, done: bool) -> None:
        print(json.dumps({"contest": what, "done": done}), flush=True)

    print(json.dumps(run_process(config, process, report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
