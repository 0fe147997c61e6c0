"""The ONNX files this process has exported or described, by the identity of what they hold.

A worker exports (or reuses) a source's file once and describes a user's file once; every later
``artifact()`` call in the process gets the same description, unless the file has gone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path

from ccnbench.formats.onnx_artifact import Artifact
from ccnbench.formats.onnx_export import DEFAULT_ARTIFACTS

_artifacts: dict[tuple[Hashable, ...], Artifact] = {}


def artifacts_key(artifacts_dir: Path | str | None) -> str:
    """The artifacts folder as a cache key: absolute, so a relative folder seen from another
    working directory is another folder."""
    return str(Path(artifacts_dir or DEFAULT_ARTIFACTS).resolve())


def cached_export(key: tuple[Hashable, ...], export: Callable[[], Artifact], force: bool = False) -> Artifact:
    """The file exported earlier in this process under ``key`` if it is still on disk, else
    ``export()`` (always with ``force``)."""
    artifact = _artifacts.get(key)
    if force or artifact is None or not Path(artifact.path).exists():
        _artifacts[key] = artifact = export()
    return artifact


def cached_description(key: tuple[Hashable, ...], describe: Callable[[], Artifact]) -> Artifact:
    """A user's file described once per process (``remember`` stores one described elsewhere)."""
    if key not in _artifacts:
        _artifacts[key] = describe()
    return _artifacts[key]


def remember(key: tuple[Hashable, ...], artifact: Artifact) -> None:
    _artifacts[key] = artifact
