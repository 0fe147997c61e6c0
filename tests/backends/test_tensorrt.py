"""Native TensorRT backend.

Without TensorRT (CI): importing the backend loads no TensorRT, availability is a reason with
the install line, and the pure parts are checked: version shims (functions of the module's
version and members, given as plain namespaces), profile shapes, the engine cache key and the
messages a user sees. TensorRT's own API is exercised only with the real library and a GPU
(``tensorrt`` marker): real engines, checked against the float64 oracle.
"""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ccnbench.backends import BuildOptions, Target, tensorrt_compat
from ccnbench.backends.tensorrt import TensorRTBackend, export_engine
from ccnbench.backends.tensorrt_build import batch_profiles, engine_key, format_parser_errors, profile_index
from ccnbench.backends.tensorrt_compat import (
    TensorRTError,
    check_supported_version,
    engine_device_memory_bytes,
    network_creation_flags,
    torch_dtype,
    trt_version_tuple,
)
from ccnbench.errors import CcnbenchError, MissingDependency, UsageError
from ccnbench.measure.agreement import TolerancePolicy, compare
from ccnbench.models import spec_from_preset
from ccnbench.source import ModelSource

INSTALL = "pip install 'ccnbench[tensorrt]'"


# --- without TensorRT ---------------------------------------------------------------------------


def test_importing_the_backend_does_not_import_tensorrt():
    code = "import sys, ccnbench.backends; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_backend_describes_itself():
    backend = TensorRTBackend()
    assert backend.name == "tensorrt" and backend.devices == ("cuda",) and backend.needs_onnx
    assert backend.precisions("cuda") == ("fp32", "fp16")
    assert [str(t) for t in backend.targets()] == ["tensorrt:cuda"]


def test_missing_tensorrt_is_a_reason_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import now fails as if it were not installed
    reason = TensorRTBackend().availability("cuda")
    assert reason.startswith("tensorrt is not installed (") and reason.endswith(f"): {INSTALL}")


def test_export_and_prepare_raise_the_availability_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    reason = TensorRTBackend().availability("cuda")
    artifact = SimpleNamespace(path=tmp_path / "model.onnx", sha256="0" * 64)
    with pytest.raises(CcnbenchError) as exported:
        export_engine(artifact, BuildOptions(artifacts_dir=tmp_path))
    assert str(exported.value) == reason
    source = ModelSource.from_spec(spec_from_preset("tiny", "model", branches=3))
    with pytest.raises(CcnbenchError) as prepared:
        TensorRTBackend().prepare(source, Target("tensorrt", "cuda"), BuildOptions(artifacts_dir=tmp_path))
    assert str(prepared.value) == reason
    assert list(tmp_path.iterdir()) == []  # nothing exported, nothing built


def test_a_broken_install_is_not_reported_as_missing(monkeypatch):
    def broken(module: str, extra: str | None = None) -> Any:
        try:
            raise ImportError("libnvinfer.so.10: cannot open shared object file")
        except ImportError as exc:
            raise MissingDependency(f"{module} is not installed ({exc.msg}): {INSTALL}") from exc

    monkeypatch.setattr(tensorrt_compat, "require", broken)
    reason = TensorRTBackend().availability("cuda")
    assert "installed but cannot be imported" in reason and "libnvinfer.so.10" in reason
    assert "--force-reinstall" in reason

    def crashing(module: str, extra: str | None = None) -> Any:
        raise OSError("CUDA driver version is insufficient")

    monkeypatch.setattr(tensorrt_compat, "require", crashing)
    assert "CUDA driver version is insufficient" in TensorRTBackend().availability("cuda")


def test_old_tensorrt_is_unavailable_with_an_upgrade_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.0.1.6"))
    reason = TensorRTBackend().availability("cuda")
    assert "tensorrt 10.0.1.6 is older than 10.1" in reason and "pip install -U" in reason


def test_a_supported_tensorrt_then_depends_on_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.13.3.9"))
    reason = TensorRTBackend().availability("cuda")
    if torch.cuda.is_available():
        assert reason is None
    else:
        assert reason.startswith("no CUDA device")
    assert TensorRTBackend().availability("cpu") == "tensorrt runs on cuda only, not cpu"


# --- version shims: functions of the version and the members a release has ----------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("10.13.3.9", (10, 13, 3, 9)),
        ("11.1.0.106", (11, 1, 0, 106)),
        ("10.1.0.post1", (10, 1, 0)),
        ("", (0,)),
    ],
)
def test_version_tuple(version, expected):
    assert trt_version_tuple(SimpleNamespace(__version__=version)) == expected


@pytest.mark.parametrize("version", ["8.6.1", "10.0.1.6", "9.3.0"])
def test_versions_before_10_1_are_rejected(version):
    with pytest.raises(MissingDependency, match=r"older than 10\.1"):
        check_supported_version(SimpleNamespace(__version__=version))


@pytest.mark.parametrize("version", ["10.1.0", "10.16.1.11", "11.0.0", "11.4.0.1"])
def test_versions_from_10_1_are_accepted(version):
    check_supported_version(SimpleNamespace(__version__=version))


def test_networks_are_strongly_typed_on_10_and_pass_no_flags_on_11():
    flags = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, start=0)
    ten = SimpleNamespace(__version__="10.13.3.9", NetworkDefinitionCreationFlag=flags)
    assert network_creation_flags(ten) == 1 << 1
    # 11 ignores STRONGLY_TYPED (always strongly typed); a module without the enum still works.
    assert network_creation_flags(SimpleNamespace(__version__="11.1.0")) == 0


def test_device_memory_prefers_v2_and_falls_back_to_the_old_property():
    assert engine_device_memory_bytes(SimpleNamespace(device_memory_size_v2=5, device_memory_size=9)) == 5
    assert engine_device_memory_bytes(SimpleNamespace(device_memory_size=9)) == 9
    assert engine_device_memory_bytes(SimpleNamespace()) is None


def test_dtypes_map_by_member_name_and_a_missing_member_has_no_mapping():
    full = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "INT32", "INT64", "BOOL", "FP8"])
    trt = SimpleNamespace(DataType=full)
    expected = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}
    expected |= {"INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
    assert {m.name: torch_dtype(trt, m) for m in full if m.name != "FP8"} == expected
    with pytest.raises(TensorRTError, match="no torch equivalent"):
        torch_dtype(trt, full.FP8)
    older = SimpleNamespace(DataType=enum.Enum("DataType", ["FLOAT", "HALF"]))
    with pytest.raises(TensorRTError):
        torch_dtype(older, full.BF16)  # a build without BF16 maps nothing to it


# --- profiles, cache key, messages --------------------------------------------------------------


def test_every_batch_size_gets_its_own_profile_and_a_batch_finds_its_own():
    assert batch_profiles([8, 1, 32, 8]) == ((1, 1, 1), (8, 8, 8), (32, 32, 32))
    for bad in ((), (0, 4), (-1,)):
        with pytest.raises(UsageError):
            batch_profiles(bad)
    profiles = batch_profiles([1, 8, 32])
    assert [profile_index(profiles, b) for b in (1, 8, 32)] == [0, 1, 2]
    with pytest.raises(TensorRTError, match=r"batch 4 has no optimization profile \(built for 1, 8, 32\)"):
        profile_index(profiles, 4)


def test_engine_key_changes_with_everything_that_changes_the_plan_and_nothing_else():
    args = ("a" * 64, "10.13.3.9", "NVIDIA H100 sm90", ((1, 1, 1), (4, 4, 4)))
    options = BuildOptions()
    base = engine_key(*args, options)
    assert base == engine_key(*args, replace(options, threads=8, cudnn_conv_algo_search="DEFAULT"))
    changed = [
        engine_key("b" * 64, *args[1:], options),
        engine_key(args[0], "11.1.0.106", *args[2:], options),
        engine_key(*args[:2], "NVIDIA H200 sm90", args[3], options),
        engine_key(*args[:3], ((1, 1, 1),), options),
        engine_key(*args[:3], ((1, 4, 4),), options),
        engine_key(*args, replace(options, precision="fp16")),
        engine_key(*args, replace(options, workspace_mib=1)),
        engine_key(*args, replace(options, builder_optimization_level=5)),
    ]
    assert len({base, *changed}) == len(changed) + 1


class _ParserError:
    """What ``OnnxParser.get_error`` returns (a ``ParserError``), as plain data."""

    def __init__(self, code: str, desc: str, node: int, name: str, op: str) -> None:
        self.code, self.desc = (lambda: code), (lambda: desc)
        self.node, self.node_name, self.node_operator = (lambda: node), (lambda: name), (lambda: op)


def test_a_parser_failure_lists_every_error_on_one_line():
    errors = [
        _ParserError("UNSUPPORTED_NODE", "no importer for MaxUnpool", 7, "/pool/MaxUnpool", "MaxUnpool"),
        _ParserError("INVALID_GRAPH", "graph input has no type", -1, "", ""),
    ]
    parser = SimpleNamespace(num_errors=len(errors), get_error=errors.__getitem__)
    assert format_parser_errors(parser, Path("/x/m.onnx")) == (
        "TensorRT's ONNX parser rejected m.onnx (2 error(s)): "
        "#0 UNSUPPORTED_NODE: no importer for MaxUnpool [node 7 '/pool/MaxUnpool' (MaxUnpool)]; "
        "#1 INVALID_GRAPH: graph input has no type [node -1]"
    )
    empty = SimpleNamespace(num_errors=0, get_error=None)
    assert format_parser_errors(empty, Path("x.onnx")).endswith("(0 error(s)): the parser recorded no error")


# --- real TensorRT on a GPU ------------------------------------------------------------------------


def _source(layout: str) -> ModelSource:
    return ModelSource.from_spec(spec_from_preset("tiny", "model", branches=3), layout)


def _check_against_oracle(runner: Any, source: ModelSource, precision: str, batch: int) -> None:
    inputs = source.make_inputs(batch)
    outputs = runner.infer([x.to("cuda", runner.input_dtype) for x in inputs])
    torch.cuda.synchronize()
    assert all(y.is_cuda for y in outputs)
    agreement = compare(outputs, source.oracle(inputs), source.output_names, TolerancePolicy(precision))
    assert agreement.passed, agreement.to_dict()


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["kept", "merged"])
def test_engine_agrees_with_the_oracle(layout, precision, artifacts_dir):
    source = _source(layout)
    options = BuildOptions(precision=precision, batch_sizes=(1, 4), artifacts_dir=artifacts_dir)
    with TensorRTBackend().prepare(source, Target("tensorrt", "cuda"), options) as runner:
        assert runner.stream is not None and runner.stream != torch.cuda.default_stream()
        assert runner.build_seconds > 0 and runner.output_names == source.output_names
        for batch in (1, 4, 1):
            _check_against_oracle(runner, source, precision, batch)
            assert runner._profile == (0 if batch == 1 else 1)  # each batch on its own profile
        staged = [x.to("cuda", runner.input_dtype) for x in source.make_inputs(4)]
        first = runner.infer(staged)
        assert runner.infer(staged)[0].data_ptr() == first[0].data_ptr()  # buffers reused, no allocation
        details = runner.details
        assert (
            details["engine_device_memory_bytes"] is not None and details["engine_device_memory_bytes"] >= 0
        )
        assert details["num_layers"] > 0 and details["profiles"] == "1,4"
        assert json.loads(Path(details["layers"]).read_text())
        assert any(d.startswith("input_0 INPUT FLOAT") for d in details["io_tensors"])
    assert runner.context is None and runner.engine is None
    runner.close()  # safe twice


@pytest.mark.tensorrt
def test_fp16_io_engine_takes_half_inputs(artifacts_dir):
    source = _source("merged")
    options = BuildOptions(precision="fp16", io="fp16", batch_sizes=(2,), artifacts_dir=artifacts_dir)
    with TensorRTBackend().prepare(source, Target("tensorrt", "cuda"), options) as runner:
        assert runner.input_dtype == torch.float16
        assert any(d.startswith("input_0 INPUT HALF") for d in runner.details["io_tensors"])
        _check_against_oracle(runner, source, "fp16", 2)
        # float32 inputs are cast to the engine's type rather than misread
        inputs = source.make_inputs(2)
        outputs = runner.infer([x.to("cuda") for x in inputs])
        torch.cuda.synchronize()
        assert compare(outputs, source.oracle(inputs), source.output_names, TolerancePolicy("fp16")).passed


@pytest.mark.tensorrt
def test_second_prepare_loads_the_cached_engine(tmp_path):
    source = _source("kept")
    options = BuildOptions(batch_sizes=(1, 4), artifacts_dir=tmp_path)
    target = Target("tensorrt", "cuda")
    with TensorRTBackend().prepare(source, target, options) as first:
        assert first.details["engine_cache_hit"] is False
    with TensorRTBackend().prepare(source, target, options) as second:
        assert second.details["engine_cache_hit"] is True
        assert second.details["engine"] == first.details["engine"]
        _check_against_oracle(second, source, "fp32", 4)
        with pytest.raises(TensorRTError, match="batch 8 has no optimization profile"):
            second.infer([x.to("cuda") for x in source.make_inputs(8)])
    with TensorRTBackend().prepare(source, target, replace(options, batch_sizes=(2,))) as other:
        assert other.details["engine_cache_hit"] is False
        assert other.details["engine"] != first.details["engine"]


@pytest.mark.tensorrt
def test_export_engine_writes_a_loadable_engine_and_its_layers(tmp_path):
    import tensorrt as trt

    artifact = _source("merged").artifact("fp32", "fp32", 18, tmp_path)
    info = export_engine(artifact, BuildOptions(batch_sizes=(1, 4), artifacts_dir=tmp_path))
    engine_path, layers_path = artifact.path.with_suffix(".engine"), artifact.path.with_suffix(".layers.json")
    assert info["engine"] == str(engine_path) and info["size_bytes"] == engine_path.stat().st_size > 0
    assert info["tensorrt"] == trt.__version__
    assert json.loads(layers_path.read_text())
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(engine_path.read_bytes()) is not None
    assert (
        export_engine(artifact, BuildOptions(batch_sizes=(1, 4), artifacts_dir=tmp_path))["cache_hit"] is True
    )
