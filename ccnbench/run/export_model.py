"""`ccnbench export --model`: a user's own module exported kept and merged, every file checked.

The same path as ``check`` and ``bench`` take for ``--model``: the factory source
(``ccnbench.source.FactorySource``) builds the module once, the graph pass
(``ccnbench.models.graph_merge``) merges its branches, ``source.artifact`` / ``aoti_build.package``
write the files, and each written file is then run once (ONNX Runtime for ONNX, the AOTInductor
runner for ``.pt2``) and graded against the *kept* module in float64, as ``check`` grades every
target. A merged layout whose branches cannot be merged writes nothing: the file would be the
kept graph again, so the reason is reported instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccnbench.backends import Target, aoti_build
from ccnbench.results import CaseResult
from ccnbench.run import check, plan
from ccnbench.source import ModelSource

# Two batch sizes: the file's batch dimension must really be dynamic.
VALIDATION_BATCHES = (1, 2)


@dataclass(frozen=True)
class ExportedFile:
    """One written file, what its graph is, and how it agreed with the float64 kept module."""

    source: ModelSource
    precision: str
    artifact: Any  # onnx_artifact.Artifact (ONNX) or aoti_build.Package
    validation: tuple[CaseResult, ...]  # one per batch size; unavailable when the runtime is missing

    @property
    def agrees(self) -> bool:
        """No validation case disagreed or failed (an unavailable runtime checks nothing, says so)."""
        return not check.exit_code(self.validation)

    @property
    def max_abs(self) -> float | None:
        graded = [r.agreement.max_abs for r in self.validation if r.agreement is not None]
        return max(graded) if graded else None

    def to_dict(self) -> dict[str, Any]:
        return self.artifact.to_dict() | {
            "branches": self.source.num_inputs,
            "merge": self.source.layout_note(),
            "validation": [r.to_dict() for r in self.validation],
        }


@dataclass(frozen=True)
class ModelExport:
    """Everything ``export --model`` did: files written, and merges that stayed kept (with why)."""

    files: tuple[ExportedFile, ...]
    not_merged: tuple[tuple[ModelSource, str], ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(f.agrees for f in self.files)

    def merges(self) -> list[tuple[ModelSource, dict[str, Any]]]:
        """The graph pass's outcome per branch count (what merged, or why not), once each."""
        seen: dict[int, tuple[ModelSource, dict[str, Any]]] = {}
        for f in self.files:
            note = f.source.layout_note()
            if note is not None:
                seen.setdefault(f.source.num_inputs, (f.source, note))
        for source, _ in self.not_merged:
            seen.setdefault(source.num_inputs, (source, source.layout_note() or {}))
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "files": [f.to_dict() for f in self.files],
            "not_merged": [
                {"model": s.label, "branches": s.num_inputs, "reason": reason}
                for s, reason in self.not_merged
            ],
        }


def export_model(
    sources: Sequence[ModelSource],
    precisions: Sequence[str],
    out: Path,
    *,
    file_format: str = "onnx",
    device: str = "cpu",
    io: str = "fp32",
    opset: int = 18,
    force: bool = False,
    threads: int | None = None,
    on_file: Callable[[str], None] | None = None,
) -> ModelExport:
    """Write every source (a factory in one layout) at every precision to ``out`` and validate it.

    ``file_format`` is ``onnx`` or ``pt2`` (built for ``device``). Raises what the exporter
    raises (an ``ExportError``, a ``PackageError``); a file that disagrees with the float64 kept
    module is written and reported (``ExportedFile.agrees``), so the caller can say which.
    """
    files, not_merged = [], []
    for source in sources:
        note = source.layout_note()
        if note is not None and not note["merged"]:
            not_merged.append((source, note["reason"] or "nothing to merge"))
            continue
        for precision in precisions:
            if on_file:
                on_file(f"{source.label} {source.layout} {precision}")
            if file_format == "pt2":
                artifact: Any = aoti_build.package(source, device, precision, out, force=force)
                target = Target("aoti", device)
            else:
                artifact = source.artifact(precision, io, opset, out, force=force)
                target = Target("ort", "cpu")
            groups = plan.case_groups([source], [target], [precision], VALIDATION_BATCHES, out, opset=opset,
                                threads=threads, io=io)  # fmt: skip
            files.append(ExportedFile(source, precision, artifact, tuple(check.run(groups))))
    return ModelExport(tuple(files), tuple(not_merged))
