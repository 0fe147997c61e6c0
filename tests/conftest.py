"""Shared fixtures and the hardware markers' skip logic."""

from __future__ import annotations

import os

import pytest

# Keep test runs deterministic and light on a 2-core CI machine.
os.environ.setdefault("CCNBENCH_THREADS", "2")


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


@pytest.fixture
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory):
    """A per-session artifacts directory, so tests never touch the user's artifacts/."""
    return tmp_path_factory.getbasetemp() / "artifacts"


# The pytest-benchmark suite times runners; `make bench-ci` runs it, `make test` does not.
collect_ignore = [] if os.environ.get("CCNBENCH_BENCHMARKS") else ["benchmarks"]
