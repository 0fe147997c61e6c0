"""Results: frozen dataclasses, a versioned JSON schema, atomic writes and strict loading.

A run directory holds ``results.json`` (written atomically: temp file + rename) and, while a
sweep runs, ``journal.jsonl``: every finished case is appended there as one line and fsynced,
so a run killed at any moment loses no finished case, and saving costs one line per case
instead of rewriting every raw sample of the run. ``save`` compacts the journal into
``results.json``; ``load`` replays a journal that was never compacted (an interrupted run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ccnbench import fileio
from ccnbench.environment import Environment
from ccnbench.errors import ResultsError
from ccnbench.measure.agreement import Agreement
from ccnbench.measure.memory import MemoryStats
from ccnbench.measure.timing import LatencyStats

SCHEMA = "ccnbench.results"
SCHEMA_VERSION = 2
# Version 1 files (before contests) load as they are: their cases have no blocks, hence no intervals.
READABLE_VERSIONS = (1, 2)
RESULTS_FILE = "results.json"
JOURNAL_FILE = "journal.jsonl"
STATUSES = ("ok", "failed", "timeout", "unavailable")


@dataclass(frozen=True)
class CaseKey:
    """What identifies a case across runs: the model, its layout, the target, precision and batch,
    and for PyTorch targets the memory format of the weights.

    ``memory_format`` came later: its default is left out of the stored key, so files written
    before it and after it hold the same keys for the same cases and still match. So did
    ``quantization`` (an int8 file's recipe, ``ccnbench.formats.int8.Recipe.key``; empty for
    every other precision): two int8 files made differently are two cases.
    """

    model: str
    digest: str
    layout: str
    target: str
    precision: str
    batch: int
    memory_format: str = "contiguous"
    quantization: str = ""

    def __str__(self) -> str:
        text = f"{self.model}/{self.layout}/{self.target}/{self.precision}/b{self.batch}"
        text = text if self.memory_format == "contiguous" else f"{text}/{self.memory_format}"
        return f"{text}/{self.quantization}" if self.quantization else text

    @property
    def target_label(self) -> str:
        """The target as tables and answers show it: with the memory format unless it is the default."""
        return self.target if self.memory_format == "contiguous" else f"{self.target} {self.memory_format}"

    @property
    def group(self) -> tuple[str, ...]:
        """Cases that share one prepared runner (all batch sizes of a target)."""
        return (self.model, self.digest, self.layout, self.target, self.precision, self.memory_format)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        if self.memory_format == "contiguous":
            del data["memory_format"]
        if not self.quantization:
            del data["quantization"]
        return data


@dataclass(frozen=True)
class CaseResult:
    key: CaseKey
    status: str
    message: str = ""
    agreement: Agreement | None = None
    latency: LatencyStats | None = None
    transfers: LatencyStats | None = None
    memory: MemoryStats | None = None
    build_seconds: float | None = None
    artifact: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    contest: str | None = None  # the contest it was timed in: its latency pairs with its members'
    # Which run it came from when views read several (derived.all_cases); not saved. Contest ids
    # of files written before they were unique per run clash across runs: pairing checks both.
    run: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def is_reference(self) -> bool:
        """This target computed the oracle itself (a user's ONNX file with no reference given)."""
        return bool(self.details.get("is_reference"))

    @property
    def passed(self) -> bool:
        """Ran, and agreed with an independent oracle (agreeing with itself is not a pass, nor is
        agreeing with a reference no file could have disagreed with: ``vacuous``)."""
        return (
            self.status == "ok"
            and self.agreement is not None
            and self.agreement.passed
            and not self.agreement.vacuous
            and not self.is_reference
        )

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return self.status
        if self.agreement is None:
            return "ok"
        # NaN or Inf is never a reference, even where the target computed the oracle itself.
        if self.agreement.nonfinite:
            return "FAIL"
        if self.is_reference:
            return "reference"
        if not self.agreement.passed:
            return "FAIL"
        # Within tolerance of a reference too small or too flat for a wrong file to fail.
        return "vacuous" if self.agreement.vacuous else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key.to_dict(),
            "status": self.status,
            "verdict": self.verdict,
            "message": self.message,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "latency": self.latency.to_dict() if self.latency else None,
            "transfers": self.transfers.to_dict() if self.transfers else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "build_seconds": self.build_seconds,
            "artifact": self.artifact,
            "spec": self.spec,
            "details": self.details,
            "contest": self.contest,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        return cls(
            key=CaseKey(**data["key"]),
            status=data["status"],
            message=data.get("message", ""),
            agreement=Agreement.from_dict(data["agreement"]) if data.get("agreement") else None,
            latency=LatencyStats.from_dict(data["latency"]) if data.get("latency") else None,
            transfers=LatencyStats.from_dict(data["transfers"]) if data.get("transfers") else None,
            memory=MemoryStats.from_dict(data["memory"]) if data.get("memory") else None,
            build_seconds=data.get("build_seconds"),
            artifact=data.get("artifact"),
            spec=data.get("spec"),
            details=data.get("details") or {},
            contest=data.get("contest"),
        )


@dataclass(frozen=True)
class RunResult:
    run_id: str
    created: str
    environment: Environment
    config: dict[str, Any] = field(default_factory=dict)
    cases: tuple[CaseResult, ...] = ()
    complete: bool = False

    @property
    def tag(self) -> str:
        """What tells one run from another (two runs may share an id): its id and creation time."""
        return f"{self.run_id}@{self.created}"

    def with_case(self, case: CaseResult) -> RunResult:
        kept = tuple(c for c in self.cases if c.key != case.key)
        return replace(self, cases=(*kept, case))

    def done_keys(self) -> set[CaseKey]:
        return {c.key for c in self.cases}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "created": self.created,
            "complete": self.complete,
            "environment": self.environment.to_dict(),
            "config": self.config,
            "cases": [c.to_dict() for c in self.cases],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "results") -> RunResult:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ResultsError(f"{source} is not a ccnbench results file (no '{SCHEMA}' schema marker)")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ResultsError(
                f"{source} has results schema version {version}; this ccnbench reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        try:
            return cls(
                run_id=data["run_id"],
                created=data["created"],
                environment=Environment.from_dict(data["environment"]),
                config=data.get("config") or {},
                cases=tuple(CaseResult.from_dict(c) for c in data["cases"]),
                complete=bool(data.get("complete", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{source} is damaged: {type(exc).__name__}: {exc}") from exc


def new_run(run_id: str, environment: Environment, config: dict[str, Any]) -> RunResult:
    return RunResult(run_id, datetime.now(timezone.utc).isoformat(timespec="seconds"), environment, config)


def results_path(run_dir: Path | str) -> Path:
    path = Path(run_dir)
    return path if path.suffix == ".json" else path / RESULTS_FILE


def journal_path(run_dir: Path | str) -> Path:
    return results_path(run_dir).parent / JOURNAL_FILE


def save(run: RunResult, run_dir: Path | str) -> Path:
    """Write atomically (readers see the old file or the new one), then drop the journal.

    The journal goes only after the new file is in place: a crash in between leaves cases in
    both, and ``load`` keeps one copy of each.
    """
    path = results_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_text(path, json.dumps(run.to_dict(), indent=1, allow_nan=False))
    journal_path(path).unlink(missing_ok=True)
    return path


def append_case(run_dir: Path | str, case: CaseResult) -> None:
    """Append one finished case to the run's journal and fsync it: it survives a kill from here on."""
    line = json.dumps(case.to_dict(), allow_nan=False) + "\n"
    with journal_path(run_dir).open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _replay_journal(run: RunResult, path: Path) -> RunResult:
    """Cases appended after the last compaction; a half-written last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return run
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    cases = {c.key: c for c in run.cases}
    for number, line in enumerate(lines, 1):
        try:
            case = CaseResult.from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if number == len(lines):
                break  # the line being written when the run was killed
            raise ResultsError(f"{path} line {number} is damaged: {exc}") from exc
        cases.pop(case.key, None)  # a rerun case replaces the old one and moves to the end
        cases[case.key] = case
    return replace(run, cases=tuple(cases.values()))


def read_json(path: Path) -> Any:
    """A results file's JSON; a missing or unreadable file is a ResultsError."""
    if not path.is_file():
        raise ResultsError(f"no results at {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path} is not valid JSON: {exc}") from exc


def load(run_dir: Path | str) -> RunResult:
    """Read a run directory or results file, with any journal not yet compacted into it.

    A missing, corrupt or foreign file is a ResultsError.
    """
    path = results_path(run_dir)
    run = RunResult.from_dict(read_json(path), source=str(path))
    return _replay_journal(run, journal_path(path)) if path.name == RESULTS_FILE else run


def load_many(paths: Iterable[Path | str]) -> list[RunResult]:
    return [load(p) for p in paths]
