"""The registry, target parsing, and what every backend promises."""

import pytest

from ccnbench.backends import BACKENDS, Target, all_targets, backend_of, parse_targets
from ccnbench.errors import UsageError

DESIGN_TARGETS = {
    "torch:cpu",
    "torch:cuda",
    "compile:cpu",
    "compile:cuda",
    "ort:cpu",
    "ort:cuda",
    "ort:tensorrt",
    "tensorrt:cuda",
}


def test_every_design_target_is_registered():
    registered = {str(t) for t in all_targets()}
    assert registered >= DESIGN_TARGETS
    assert "compile-graphs:cuda" in registered


def test_parse_targets_expands_kinds_and_keeps_order():
    assert [str(t) for t in parse_targets("ort:cpu, torch:cpu,ort:cpu")] == ["ort:cpu", "torch:cpu"]
    cpu = parse_targets("cpu")
    assert {t.device_kind for t in cpu} == {"cpu"} and Target("compile", "cpu") in cpu
    assert all(t.is_cuda for t in parse_targets("cuda"))
    assert Target("ort", "tensorrt").is_cuda


@pytest.mark.parametrize(
    "text", ["", "ort", "ort:", ":cpu", "nope:cpu", "tensorrt:cpu", "compile-graphs:cpu"]
)
def test_bad_targets_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_targets(text)


def test_every_backend_answers_availability_with_none_or_a_reason():
    for target in all_targets():
        reason = backend_of(target).availability(target.device)
        assert reason is None or (isinstance(reason, str) and len(reason) > 10)
    # This machine has no GPU (CI): the CUDA targets say why, and how to fix it where possible.
    import torch

    if not torch.cuda.is_available():
        for target in parse_targets("cuda"):
            assert backend_of(target).availability(target.device)


def test_backend_names_are_unique_and_every_backend_describes_itself():
    from ccnbench.backends import _BACKENDS

    # The registry is keyed by name: a repeated name would silently hide a backend.
    assert len(BACKENDS) == len(_BACKENDS)
    assert all(backend.devices and backend.description for backend in _BACKENDS)
