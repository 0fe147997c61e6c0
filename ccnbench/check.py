"""`ccnbench check`: does every target agree with the float64 oracle? (No timing.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ccnbench.agreement import Tolerance
from ccnbench.backends import BuildOptions, Target, backend_of
from ccnbench.environment import default_threads
from ccnbench.execute import CaseGroup, run_group
from ccnbench.results import CaseResult
from ccnbench.source import ModelSource
from ccnbench.timing import Protocol


def plan(
    sources: Sequence[ModelSource],
    targets: Sequence[Target],
    precisions: Sequence[str],
    batches: Sequence[int],
    artifacts_dir: Path,
    opset: int = 18,
    threads: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    per_output: dict[str, Tolerance] | None = None,
    seed: int = 0,
    protocol: Protocol | None = None,
    transfers: bool = False,
    dynamic_batch: bool = False,
    memory_formats: Sequence[str] = ("contiguous",),
    io: str = "fp32",
) -> list[CaseGroup]:
    """Every source × target × precision as a case group over the batch sizes, and for the
    PyTorch targets one per memory format asked for (the others have only their own layout)."""
    for memory_format in memory_formats:
        BuildOptions(memory_format=memory_format)  # a UsageError for an unknown one, before any case
    options = {
        "batch_sizes": tuple(batches),
        "threads": threads or default_threads(),
        "artifacts_dir": Path(artifacts_dir),
        "opset": opset,
        "dynamic_batch": dynamic_batch,
        "io": io,
    }
    return [
        CaseGroup(
            source,
            target,
            precision,
            source.fixed_batches() or tuple(batches),
            BuildOptions(precision=precision, memory_format=memory_format, **options),
            protocol=protocol,
            atol=atol,
            rtol=rtol,
            per_output=dict(per_output or {}),
            seed=seed,
            transfers=transfers,
        )
        for source in sources
        for target in targets
        for precision in precisions
        for memory_format in _formats(target, memory_formats)
    ]


def _formats(target: Target, asked: Sequence[str]) -> list[str]:
    """The memory formats ``target`` runs of those asked for; a file format runs its own layout."""
    offered = backend_of(target).memory_formats
    return [f for f in asked if f in offered] or [offered[0]]


def run(
    groups: Sequence[CaseGroup], on_result: Callable[[CaseGroup, CaseResult], None] | None = None
) -> list[CaseResult]:
    """Run every group in this process and collect the results."""
    results = []
    for group in groups:
        for result in run_group(group):
            results.append(result)
            if on_result:
                on_result(group, result)
    return results


def exit_code(results: Sequence[CaseResult]) -> int:
    """1 if any target that could run failed, crashed or disagreed; unavailable targets don't count,
    nor does the target that served as the reference (it has nothing to disagree with)."""
    return int(any(r.verdict in ("failed", "timeout", "FAIL") for r in results))


def unchecked_note(results: Sequence[CaseResult]) -> str | None:
    """What to tell the user when some cases were only compared with themselves."""
    references = sorted({f"{r.key.model} on {r.key.target}" for r in results if r.is_reference})
    if not references:
        return None
    return (
        f"nothing independent was checked for {', '.join(references)}: that target computed the reference "
        "itself; give --model file.py:factory (the PyTorch module it came from) or saved outputs "
        "(--load-inputs/--load-outputs) to check the file against something real"
    )
