"""What a case that did not run, or did not finish, looks like: the one place those results are built.

A group that cannot run here is ``unavailable`` (with the reason); one whose runner failed to
build, whose batch raised, or whose worker died or overran is ``failed`` (or ``timeout``) with
a one-line message. ``case_group``, ``contest`` and ``sweep`` all build such results through here,
so a stored run reads the same whichever of them gave up.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ccnbench.errors import one_line
from ccnbench.results import CaseKey, CaseResult
from ccnbench.run.plan import CaseGroup


def unavailable(
    group: CaseGroup, reason: str, keys: Sequence[CaseKey] | None = None, contest: str | None = None
) -> list[CaseResult]:
    """The group's cases (or ``keys`` of them) as unavailable here, saying why."""
    return [
        CaseResult(k, "unavailable", reason, spec=group.spec, contest=contest)
        for k in (group.case_keys() if keys is None else keys)
    ]


def failed(
    group: CaseGroup,
    message: str,
    keys: Sequence[CaseKey] | None = None,
    contest: str | None = None,
    artifact: Any = None,
    status: str = "failed",
) -> list[CaseResult]:
    """The group's cases (or ``keys`` of them) as failed (or ``status``: a worker's timeout),
    with the message and, when the runner got that far, the artifact it loaded."""
    return [
        CaseResult(k, status, message, spec=group.spec, artifact=artifact_summary(artifact), contest=contest)
        for k in (group.case_keys() if keys is None else keys)
    ]


def describe(exc: BaseException) -> str:
    """One line: the exception type and message, plus where it came from in a user's code."""
    text = one_line(exc, limit=500) or "(no message)"
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {text}{where}"


def artifact_summary(artifact: Any) -> dict[str, Any] | None:
    """What results keep of the file a target loaded (ONNX file or .pt2 package)."""
    if artifact is None:
        return None
    return {
        "file": artifact.path.name,
        "size_bytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "opset": artifact.opset,
        "conv_count": artifact.conv_count,
        "export_seconds": artifact.export_seconds,
    }
