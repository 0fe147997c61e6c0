"""Shared fixtures and the hardware markers' skip logic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Keep test runs deterministic and light on a 2-core CI machine.
os.environ.setdefault("CCNBENCH_THREADS", "2")
# Measured roofs go to a cache of this test session, never the user's (~/.cache/ccnbench): the
# first test that needs a roof measures it (seconds), the others read it.
os.environ.setdefault("CCNBENCH_CACHE", tempfile.mkdtemp(prefix="ccnbench-cache-"))
os.environ.setdefault("CCNBENCH_ROOF_SECONDS", "0.02")  # one or two calls a block: bookkeeping, not figures


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _tensorrt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"tensorrt is not importable ({type(exc).__name__}: {exc})"
    if not _cuda_available():
        return "tensorrt needs a CUDA device and none is visible"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = None if _cuda_available() else "no CUDA device on this machine"
    no_trt = _tensorrt_reason()
    for item in items:
        if no_cuda and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=no_cuda))
        if no_trt and "tensorrt" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=no_trt))


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifacts directory for the whole session, so each ONNX file or .pt2 package a test
    needs is built once (names carry the model's digest, so tests cannot get each other's file),
    and tests never touch the user's artifacts/."""
    return tmp_path_factory.mktemp("artifacts", numbered=False)


@pytest.fixture
def quick_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick`` (and ``quick = true``) as ``helpers.PLUMBING``: one contest process of five short
    rounds. For tests of what a sweep does with its cases, not of how it times them."""
    from ccnbench.run import config

    from helpers import PLUMBING

    monkeypatch.setattr(config, "QUICK", PLUMBING)


# The pytest-benchmark suite times runners; `make bench-ci` runs it, `make test` does not.
collect_ignore = [] if os.environ.get("CCNBENCH_BENCHMARKS") else ["benchmarks"]
