"""Measured roofs: what one measurement keeps, and the per-machine cache around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccnbench.backends import Target
from ccnbench.roofline import kernels
from ccnbench.roofline.roofs import (
    MEMORY,
    Roof,
    RoofCache,
    RoofKey,
    compute_key,
    measure,
    memory_key,
    roofs_for,
    software_version,
)


def test_a_measured_roof_keeps_every_repeat_and_its_best() -> None:
    key = RoofKey(MEMORY, "cpu", "-", 1)
    roof = measure(key, repeats=3, seconds=0.01)
    assert len(roof.repeats) == 3 and all(r > 0 for r in roof.repeats)
    assert roof.rate == max(roof.repeats)
    assert 0.0 <= roof.spread < 1.0
    assert "triad" in roof.method and "3 blocks" in roof.method
    assert roof.software == software_version(MEMORY)
    assert Roof.from_dict(json.loads(json.dumps(roof.to_dict()))) == roof


def test_each_runtime_measures_its_own_gemm() -> None:
    for target in ("torch:cpu", "ort:cpu", "openvino:cpu"):
        key = compute_key(Target.parse(target), "fp32", 1)
        if target.startswith("openvino"):
            pytest.importorskip("openvino")
        roof = measure(key, repeats=1, seconds=0.01)
        assert key.family in roof.method and "1024×1024×1024 fp32" in roof.method
        assert roof.rate > 0


@pytest.mark.parametrize("precision", ["int8-u8", "int8-s8"])
def test_an_int8_roof_is_the_qdq_gemm_the_int8_files_have(tmp_path: Path, precision: str) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(kernels.gemm_onnx(tmp_path / "g.onnx", precision, n=8)))
    ops = [n.op_type for n in model.graph.node]
    assert ops == [
        "QuantizeLinear",
        "DequantizeLinear",
        "DequantizeLinear",
        "MatMul",
        "QuantizeLinear",
        "DequantizeLinear",
    ]
    zero = next(i for i in model.graph.initializer if i.name == "a_zero")
    assert zero.data_type == (onnx.TensorProto.UINT8 if precision == "int8-u8" else onnx.TensorProto.INT8)
    roof = measure(compute_key(Target.parse("ort:cpu"), precision, 1), repeats=1, seconds=0.01)
    assert roof.rate > 0 and precision in roof.method
    with pytest.raises(ValueError, match="no bf16 GEMM file"):
        kernels.gemm_onnx(tmp_path / "b.onnx", "bf16")


def test_rates_are_work_over_the_fastest_call() -> None:
    calls = iter([0.0] * 100)
    rates = kernels.fastest_rates(lambda: next(calls), work=1e6, repeats=4, seconds=0.0, sync=lambda: None)
    assert len(rates) == 4 and all(r > 0 for r in rates)
    assert kernels.triad_bytes(10) == 120 and kernels.gemm_flops(2) == 16


def test_targets_map_to_their_runtime_and_the_gpu_to_its_card() -> None:
    assert compute_key(Target.parse("compile:cpu"), "fp32", 2) == RoofKey("torch", "cpu", "fp32", 2)
    assert compute_key(Target.parse("ort:cpu"), "fp16", 2).family == "onnxruntime"
    # On CUDA every runtime reads against the card's GEMM, whatever the CPU thread count.
    assert compute_key(Target.parse("tensorrt:cuda"), "fp16", 2) == RoofKey("torch", "cuda", "fp16", 0)
    assert memory_key(Target.parse("ort:cuda"), 2) == RoofKey(MEMORY, "cuda", "-", 0)


class _Counting:
    def __init__(self, rate: float = 1e9) -> None:
        self.calls: list[RoofKey] = []
        self.rate = rate

    def __call__(self, key: RoofKey) -> Roof:
        self.calls.append(key)
        if key.precision == "bf16":
            raise ValueError("no bf16 here")
        return Roof(key, self.rate, (self.rate, self.rate / 2), "fake", software_version(key.family), "now")


def test_the_cache_measures_each_roof_once_per_machine(tmp_path: Path) -> None:
    fake = _Counting()
    cases = [(Target.parse("ort:cpu"), "fp32", 2), (Target.parse("openvino:cpu"), "fp32", 2)]
    pairs = roofs_for(cases, cache=RoofCache("machine-a", tmp_path, fake))
    assert len(fake.calls) == 3  # two GEMMs, one memory roof shared by both
    assert all(p.complete and p.ridge == 1.0 for p in pairs.values())
    again = _Counting()
    roofs_for(cases, cache=RoofCache("machine-a", tmp_path, again))
    assert again.calls == []  # read from machine-a's file
    other = _Counting()
    roofs_for(cases, cache=RoofCache("machine-b", tmp_path, other))
    assert len(other.calls) == 3  # another machine is measured anew
    refreshed = _Counting(rate=2e9)
    pairs = roofs_for(cases, refresh=True, cache=RoofCache("machine-a", tmp_path, refreshed))
    assert len(refreshed.calls) == 3 and all(p.compute.rate == 2e9 for p in pairs.values())
    stored = json.loads((tmp_path / "machine-a.json").read_text())
    assert stored["machine_id"] == "machine-a" and len(stored["roofs"]) == 3


def test_a_refresh_never_lowers_a_roof_and_a_reset_forgets_it(tmp_path: Path) -> None:
    key = RoofKey("torch", "cpu", "fp32", 1)
    RoofCache("m", tmp_path, _Counting(rate=3e9)).get(key)
    busy = RoofCache("m", tmp_path, _Counting(rate=1e9)).get(key, refresh=True)
    assert busy.rate == 3e9  # a measurement on a busy machine cannot pull the roof down
    assert busy.repeats == (3e9, 1.5e9, 1e9, 0.5e9)  # both measurements' repeats are kept
    assert RoofCache("m", tmp_path).get(key).rate == 3e9
    reset = RoofCache("m", tmp_path, _Counting(rate=1e9)).get(key, reset=True)
    assert reset.rate == 1e9 and reset.repeats == (1e9, 0.5e9)


def test_a_new_library_version_is_a_new_roof(tmp_path: Path) -> None:
    key = RoofKey("torch", "cpu", "fp32", 1)
    old = Roof(key, 1e9, (1e9,), "fake", "0.0-old", "then")
    (tmp_path / "m.json").write_text(json.dumps({"machine_id": "m", "roofs": [old.to_dict()]}))
    fake = _Counting()
    assert RoofCache("m", tmp_path, fake).get(key).software == software_version("torch")
    assert fake.calls == [key]


def test_a_roof_that_cannot_be_measured_says_why(tmp_path: Path) -> None:
    pairs = roofs_for([(Target.parse("ort:cpu"), "bf16", 2)], cache=RoofCache("m", tmp_path, _Counting()))
    pair = next(iter(pairs.values()))
    assert pair.compute is None and pair.memory is not None and not pair.complete
    assert pair.ridge is None
    assert pair.reasons == ("onnxruntime bf16 on cpu, 2 thread(s): not measured (no bf16 here)",)


def test_a_damaged_cache_file_is_measured_anew(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{not json")
    fake = _Counting()
    RoofCache("m", tmp_path, fake).get(RoofKey(MEMORY, "cpu", "-", 1))
    assert len(fake.calls) == 1
    assert json.loads((tmp_path / "m.json").read_text())["roofs"]
