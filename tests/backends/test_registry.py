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


def test_the_cpu_targets_of_required_dependencies_are_available():
    # torch and onnxruntime are required dependencies: their CPU targets run on every install.
    for target in parse_targets("torch:cpu,ort:cpu"):
        assert backend_of(target).availability(target.device) is None, target


def test_without_a_cuda_device_every_cuda_target_says_why_on_one_line(monkeypatch):
    import torch

    from ccnbench.backends.torch_eager import cuda_unavailable_reason

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reasons = {str(t): backend_of(t).availability(t.device) for t in parse_targets("cuda")}
    assert all(reason and "\n" not in reason for reason in reasons.values()), reasons
    # The PyTorch targets give torch's own reason; the others name what they miss first.
    torch_reason = cuda_unavailable_reason()
    for name in ("torch:cuda", "compile:cuda", "compile-graphs:cuda", "aoti:cuda"):
        assert reasons[name] == torch_reason


def test_backend_names_are_unique_and_every_backend_describes_itself():
    from ccnbench.backends import _BACKENDS

    # The registry is keyed by name: a repeated name would silently hide a backend.
    assert len(BACKENDS) == len(_BACKENDS)
    assert all(backend.devices and backend.description for backend in _BACKENDS)
