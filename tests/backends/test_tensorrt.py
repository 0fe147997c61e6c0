"""Native TensorRT backend.

Without TensorRT (CI): the module imports lazily, availability says how to install it, and the
version gating and build sequence are checked against fake ``tensorrt`` modules that mimic the
documented 10.x and 11.x Python APIs (members a version lacks raise AttributeError, and reads
of members we must never use are recorded). With TensorRT and a GPU (``tensorrt`` marker):
real engines, checked against the float64 oracle.
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

from ccnbench.agreement import TolerancePolicy, compare
from ccnbench.backends import BuildOptions, Target
from ccnbench.backends import tensorrt as trt_backend
from ccnbench.backends.tensorrt import (
    TensorRTBackend,
    TensorRTError,
    TensorRTRunner,
    add_batch_profiles,
    batch_profiles,
    build_serialized_engine,
    check_supported_version,
    create_runner,
    describe_io,
    engine_device_memory_bytes,
    engine_key,
    export_engine,
    format_parser_errors,
    make_logger,
    network_creation_flags,
    process_logger,
    profile_index,
    torch_dtype,
    trt_version_tuple,
)
from ccnbench.errors import CcnbenchError, MissingDependency, UsageError
from ccnbench.models import spec_from_preset
from ccnbench.source import ModelSource

INSTALL = "pip install 'ccnbench[tensorrt]'"


# --- fake tensorrt modules ---------------------------------------------------------------------


class Members:
    """An enum-like namespace that records every member read; absent members raise AttributeError."""

    def __init__(self, name: str, names: dict[str, int]) -> None:
        object.__setattr__(self, "_enum", enum.IntEnum(name, names))
        object.__setattr__(self, "read", [])

    def __getattr__(self, name: str) -> Any:
        members = object.__getattribute__(self, "_enum").__members__
        if name not in members:
            raise AttributeError(name)
        self.read.append(name)
        return members[name]


_DATA_TYPES = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7}
_DATA_TYPES |= {"INT64": 8, "INT4": 9}


class FakeILogger:
    Severity = enum.IntEnum(
        "Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
    )

    def __init__(self) -> None:
        self.base_initialised = True


def fake_trt(version: str, **extra: Any) -> SimpleNamespace:
    """The parts of ``tensorrt`` ccnbench touches, as documented for ``version`` (10.x or 11.x).

    10.x: NetworkDefinitionCreationFlag has EXPLICIT_BATCH (ignored) and STRONGLY_TYPED;
    BuilderFlag has FP16/BF16/INT8/TF32. 11.x: no EXPLICIT_BATCH, STRONGLY_TYPED deprecated and
    ignored, no precision builder flags (only TF32 of the ones that matter here).
    """
    eleven = version.startswith("11")
    flags = (
        {"STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 1}
        if eleven
        else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    )
    builder_flags = (
        {"TF32": 6, "REFIT": 2} if eleven else {"FP16": 0, "INT8": 1, "REFIT": 2, "BF16": 3, "TF32": 6}
    )
    return SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=Members("NetworkDefinitionCreationFlag", flags),
        BuilderFlag=Members("BuilderFlag", builder_flags),
        DataType=Members("DataType", _DATA_TYPES),
        MemoryPoolType=Members("MemoryPoolType", {"WORKSPACE": 0}),
        ProfilingVerbosity=Members("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2}),
        TensorIOMode=Members("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2}),
        LayerInformationFormat=Members("LayerInformationFormat", {"ONELINE": 0, "JSON": 1}),
        ILogger=FakeILogger,
        **extra,
    )


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (lo, opt, hi)


class FakeConfig:
    def __init__(self, accept_cache: bool) -> None:
        self.accept_cache = accept_cache
        self.pools: dict[Any, int] = {}
        self.cleared: list[Any] = []
        self.set_flags: list[Any] = []
        self.profiles: list[FakeProfile] = []
        self.created_caches: list[bytes] = []
        self.set_caches: list[tuple[bytes, bool]] = []
        self.builder_optimization_level = 3
        self.profiling_verbosity = None

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def clear_flag(self, flag: Any) -> None:
        self.cleared.append(flag)

    def set_flag(self, flag: Any) -> None:
        self.set_flags.append(flag)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> FakeTimingCache:
        self.created_caches.append(bytes(serialized_timing_cache))
        return FakeTimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.set_caches.append((cache.data, ignore_mismatch))
        return self.accept_cache or cache.data == b""

    def get_timing_cache(self) -> FakeTimingCache:
        return FakeTimingCache(b"tuned-timing-cache")


class FakeParserError:
    def __init__(self, code: str, desc: str, node: int, name: str, op: str) -> None:
        self._values = (code, desc, node, name, op)

    def code(self) -> str:
        return self._values[0]

    def desc(self) -> str:
        return self._values[1]

    def node(self) -> int:
        return self._values[2]

    def node_name(self) -> str:
        return self._values[3]

    def node_operator(self) -> str:
        return self._values[4]


class FakeParser:
    def __init__(self, errors: list[FakeParserError]) -> None:
        self.errors = errors
        self.parsed: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> FakeParserError:
        return self.errors[index]

    def parse_from_file(self, model: str) -> bool:
        self.parsed.append(model)
        return not self.errors


class FakeNetwork:
    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.inputs = [SimpleNamespace(name=n, shape=s) for n, s in shapes.items()]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> Any:
        return self.inputs[index]


class FakeBuilder:
    def __init__(self, network: FakeNetwork, config: FakeConfig, plan: bytes | None) -> None:
        self.network, self.config, self.plan = network, config, plan
        self.network_flags: list[int] = []

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self.network_flags.append(flags)
        return self.network

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def create_builder_config(self) -> FakeConfig:
        return self.config

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
        return self.plan


TINY_INPUTS = {"input_0": (-1, 1, 12, 12, 12), "input_1": (-1, 1, 12, 12, 12), "scale": (1,)}


def build_fakes(
    version: str,
    *,
    inputs: dict[str, tuple[int, ...]] = TINY_INPUTS,
    errors: list[FakeParserError] | None = None,
    plan: bytes | None = b"PLAN",
    accept_cache: bool = True,
) -> SimpleNamespace:
    """A fake module whose Builder/OnnxParser hand out the given objects, plus those objects."""
    network, config = FakeNetwork(inputs), FakeConfig(accept_cache)
    builder = FakeBuilder(network, config, plan)
    parser = FakeParser(errors or [])
    trt = fake_trt(version, Builder=lambda logger: builder, OnnxParser=lambda net, logger: parser)
    return SimpleNamespace(trt=trt, builder=builder, network=network, config=config, parser=parser)


# --- without TensorRT ---------------------------------------------------------------------------


def test_importing_the_backend_does_not_import_tensorrt():
    code = "import sys, ccnbench.backends.tensorrt; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_backend_describes_itself():
    backend = TensorRTBackend()
    assert backend.name == "tensorrt" and backend.devices == ("cuda",) and backend.needs_onnx
    assert backend.precisions("cuda") == ("fp32", "fp16")
    assert backend.description and "\n" not in backend.description
    assert [str(t) for t in backend.targets()] == ["tensorrt:cuda"]


def test_missing_tensorrt_is_a_reason_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import now fails as if it were not installed
    reason = TensorRTBackend().availability("cuda")
    assert reason is not None and reason.startswith("tensorrt is not installed") and INSTALL in reason


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
    assert not (tmp_path / "model.engine").exists()


def test_a_broken_install_is_not_reported_as_missing(monkeypatch):
    def broken(module: str, extra: str | None = None) -> Any:
        try:
            raise ImportError("libnvinfer.so.10: cannot open shared object file")
        except ImportError as exc:
            raise MissingDependency(f"{module} is not installed ({exc.msg}): {INSTALL}") from exc

    monkeypatch.setattr(trt_backend, "require", broken)
    reason = TensorRTBackend().availability("cuda")
    assert "installed but cannot be imported" in reason and "libnvinfer.so.10" in reason
    assert "--force-reinstall" in reason

    def crashing(module: str, extra: str | None = None) -> Any:
        raise OSError("CUDA driver version is insufficient")

    monkeypatch.setattr(trt_backend, "require", crashing)
    assert "CUDA driver version is insufficient" in TensorRTBackend().availability("cuda")


def test_old_tensorrt_is_unavailable_with_an_upgrade_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("10.0.1.6"))
    reason = TensorRTBackend().availability("cuda")
    assert "tensorrt 10.0.1.6 is older than 10.1" in reason and "pip install -U" in reason


def test_supported_tensorrt_then_depends_on_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt("10.13.3.9"))
    reason = TensorRTBackend().availability("cuda")
    if torch.cuda.is_available():
        assert reason is None
    else:
        assert reason.startswith("no CUDA device")
    assert TensorRTBackend().availability("cpu") == "tensorrt runs on cuda only, not cpu"


# --- version gating against fake 10.x and 11.x modules -----------------------------------------


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
        check_supported_version(fake_trt(version))


@pytest.mark.parametrize("version", ["10.1.0", "10.16.1.11", "11.0.0", "11.4.0.1"])
def test_versions_from_10_1_are_accepted(version):
    check_supported_version(fake_trt(version))


def test_tensorrt_10_networks_are_strongly_typed_without_explicit_batch():
    trt = fake_trt("10.13.3.9")
    assert network_creation_flags(trt) == 1 << 1  # STRONGLY_TYPED is bit 1 in 10.x
    assert trt.NetworkDefinitionCreationFlag.read == ["STRONGLY_TYPED"]  # EXPLICIT_BATCH never read


def test_tensorrt_11_networks_pass_no_flags():
    trt = fake_trt("11.1.0.106")
    assert network_creation_flags(trt) == 0  # always strongly typed; the flag is deprecated and ignored
    assert trt.NetworkDefinitionCreationFlag.read == []


def test_device_memory_prefers_v2_and_never_reads_the_removed_property_when_v2_exists():
    class Engine10:
        device_memory_size_v2 = 4096

        @property
        def device_memory_size(self) -> int:
            raise AssertionError("deprecated in 10.1: must not be read when device_memory_size_v2 exists")

    assert engine_device_memory_bytes(Engine10()) == 4096
    assert engine_device_memory_bytes(SimpleNamespace(device_memory_size_v2=0)) == 0  # 11.x, and 0 is a size
    assert engine_device_memory_bytes(SimpleNamespace(device_memory_size=512)) == 512  # 10.0 surface
    assert engine_device_memory_bytes(SimpleNamespace()) is None


@pytest.mark.parametrize("version", ["10.1.0", "11.1.0"])
def test_dtype_mapping(version):
    trt = fake_trt(version)
    DataType = trt.DataType
    assert torch_dtype(trt, DataType.HALF) == torch.float16
    assert torch_dtype(trt, DataType.FLOAT) == torch.float32
    assert torch_dtype(trt, DataType.BF16) == torch.bfloat16
    assert torch_dtype(trt, DataType.INT32) == torch.int32
    assert torch_dtype(trt, DataType.INT64) == torch.int64
    assert torch_dtype(trt, DataType.BOOL) == torch.bool
    with pytest.raises(TensorRTError, match="no torch equivalent"):
        torch_dtype(trt, DataType.FP8)


def test_dtype_mapping_tolerates_a_build_without_some_members():
    names = {k: v for k, v in _DATA_TYPES.items() if k not in ("BF16", "INT64")}
    trt = SimpleNamespace(DataType=Members("DataType", names))
    assert torch_dtype(trt, trt.DataType.HALF) == torch.float16
    assert torch_dtype(trt, trt.DataType.BOOL) == torch.bool


# --- parser error text, profiles per batch, engine key, logger (pure parts) -----------------------


def test_parser_failure_lists_every_error(tmp_path):
    errors = [
        FakeParserError("UNSUPPORTED_NODE", "no importer for MaxUnpool", 7, "/pool/MaxUnpool", "MaxUnpool"),
        FakeParserError("INVALID_GRAPH", "graph input has no type", -1, "", ""),
    ]
    fakes = build_fakes("11.1.0.106", errors=errors)
    with pytest.raises(TensorRTError) as raised:
        build_serialized_engine(fakes.trt, object(), tmp_path / "m.onnx", BuildOptions(), tmp_path / "t")
    message = str(raised.value)
    assert "m.onnx (2 error(s))" in message
    assert "#0 UNSUPPORTED_NODE: no importer for MaxUnpool [node 7 '/pool/MaxUnpool' (MaxUnpool)]" in message
    assert "#1 INVALID_GRAPH: graph input has no type [node -1]" in message
    assert fakes.config.pools == {}  # nothing was configured after the failed parse


def test_parser_failure_without_recorded_errors_says_so():
    parser = FakeParser([])
    assert format_parser_errors(parser, Path("x.onnx")).endswith("(0 error(s)): the parser recorded no error")


def test_build_failure_carries_the_loggers_errors(tmp_path):
    fakes = build_fakes("10.13.3.9", plan=None)
    logger = SimpleNamespace(errors=["Internal Error: out of memory for tactic"])
    with pytest.raises(TensorRTError, match=r"could not build an engine from m\.onnx: Internal Error"):
        build_serialized_engine(fakes.trt, logger, tmp_path / "m.onnx", BuildOptions(), tmp_path / "t")
    assert not (tmp_path / "t").exists()  # a failed build saves no timing cache


def test_only_the_batch_dimension_may_be_dynamic():
    fakes = build_fakes("11.1.0.106", inputs={"input": (-1, 1, -1, 12, 12)})
    with pytest.raises(TensorRTError, match="only the batch"):
        add_batch_profiles(fakes.builder, fakes.network, fakes.config, [(1, 1, 1)])


def test_static_networks_get_no_profile():
    fakes = build_fakes("11.1.0.106", inputs={"input": (2, 1, 12, 12, 12)})
    assert add_batch_profiles(fakes.builder, fakes.network, fakes.config, [(1, 1, 1), (4, 4, 4)]) == []
    assert fakes.config.profiles == []


def test_every_batch_size_gets_its_own_profile_for_every_dynamic_input():
    fakes = build_fakes("11.1.0.106")  # two dynamic inputs of shape (-1, 1, 12, 12, 12)
    profiles = batch_profiles([32, 1, 8])
    assert add_batch_profiles(fakes.builder, fakes.network, fakes.config, profiles) == ["input_0", "input_1"]
    rest = (1, 12, 12, 12)
    assert [p.shapes for p in fakes.config.profiles] == [
        {name: ((b, *rest),) * 3 for name in ("input_0", "input_1")} for b in (1, 8, 32)
    ]


def test_batch_profiles_and_the_profile_of_a_batch():
    assert batch_profiles([8, 1, 32, 8]) == ((1, 1, 1), (8, 8, 8), (32, 32, 32))
    assert batch_profiles((1,)) == ((1, 1, 1),)
    for bad in ((), (0, 4), (-1,)):
        with pytest.raises(UsageError):
            batch_profiles(bad)
    profiles = batch_profiles([1, 8, 32])
    assert [profile_index(profiles, b) for b in (1, 8, 32)] == [0, 1, 2]
    with pytest.raises(TensorRTError, match=r"batch 4 has no optimization profile \(built for 1, 8, 32\)"):
        profile_index(profiles, 4)


def test_engine_key_changes_with_everything_that_changes_the_plan():
    options = BuildOptions()
    base = engine_key("a" * 64, "10.13.3.9", "NVIDIA H100 sm90", ((1, 1, 1), (4, 4, 4)), options)
    assert base == engine_key(
        "a" * 64, "10.13.3.9", "NVIDIA H100 sm90", ((1, 1, 1), (4, 4, 4)), replace(options, threads=8)
    )
    variants = [
        engine_key("b" * 64, "10.13.3.9", "NVIDIA H100 sm90", ((1, 1, 1), (4, 4, 4)), options),
        engine_key("a" * 64, "11.1.0.106", "NVIDIA H100 sm90", ((1, 1, 1), (4, 4, 4)), options),
        engine_key("a" * 64, "10.13.3.9", "NVIDIA H200 sm90", ((1, 1, 1), (4, 4, 4)), options),
        engine_key("a" * 64, "10.13.3.9", "NVIDIA H100 sm90", ((1, 1, 1),), options),
        engine_key("a" * 64, "10.13.3.9", "NVIDIA H100 sm90", ((1, 4, 4),), options),  # one range
        engine_key(
            "a" * 64,
            "10.13.3.9",
            "NVIDIA H100 sm90",
            ((1, 1, 1), (4, 4, 4)),
            replace(options, precision="fp16"),
        ),
        engine_key(
            "a" * 64,
            "10.13.3.9",
            "NVIDIA H100 sm90",
            ((1, 1, 1), (4, 4, 4)),
            replace(options, workspace_mib=1),
        ),
        engine_key(
            "a" * 64,
            "10.13.3.9",
            "NVIDIA H100 sm90",
            ((1, 1, 1), (4, 4, 4)),
            replace(options, builder_optimization_level=5),
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_one_logger_per_process(monkeypatch):
    monkeypatch.setattr(trt_backend, "_PROCESS_LOGGER", None)
    trt = fake_trt("11.1.0.106")
    first = process_logger(trt)
    assert process_logger(trt) is first and process_logger(fake_trt("10.13.3.9")) is first


def test_logger_keeps_errors_and_forwards_warnings(caplog):
    trt = fake_trt("11.1.0.106")
    logger = make_logger(trt)
    assert isinstance(logger, FakeILogger) and logger.base_initialised
    logger.log(FakeILogger.Severity.ERROR, "could not find any implementation")
    logger.log(FakeILogger.Severity.WARNING, "weights are subnormal")
    logger.log(FakeILogger.Severity.INFO, "tactic chosen")
    assert logger.errors == ["could not find any implementation"]
    messages = [r.getMessage() for r in caplog.records]
    assert "TensorRT: weights are subnormal" in messages and "TensorRT: tactic chosen" not in messages


# --- engine cache and runner wiring against fakes (control flow only; real engines below) -----------


class FakeEngine:
    """An engine with the tiny model's I/O: two dynamic fp32 inputs and one output."""

    def __init__(self, trt: Any, names: tuple[str, ...] = ("input_0", "input_1", "logits")) -> None:
        self.trt, self.names = trt, names
        self.num_io_tensors = len(names)
        self.num_layers = 5
        self.device_memory_size_v2 = 1 << 20
        self.num_optimization_profiles = 2
        self.context: Any = object()

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> Any:
        return self.trt.TensorIOMode.INPUT if name.startswith("input") else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 1, 12, 12, 12) if name.startswith("input") else (-1, 30)

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [((1, 4)[profile_index], 1, 12, 12, 12)] * 3

    def create_engine_inspector(self) -> Any:
        return SimpleNamespace(
            get_engine_information=lambda fmt: json.dumps({"Layers": ["conv"], "format": fmt})
        )

    def create_execution_context(self) -> Any:
        return self.context


def fake_runtime_trt(fakes: SimpleNamespace) -> Any:
    trt = fakes.trt
    deserialised: list[bytes] = []

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Any:
            deserialised.append(bytes(serialized_engine))
            return FakeEngine(trt) if serialized_engine == b"PLAN" else None

    trt.Runtime = Runtime
    trt.deserialised = deserialised
    return trt


def test_describe_io_records_types_shapes_and_profiles():
    trt = fake_trt("11.1.0.106")
    described = describe_io(trt, FakeEngine(trt))
    assert described[0] == (
        "input_0 INPUT FLOAT (-1, 1, 12, 12, 12) "
        "profile 0 min=(1, 1, 12, 12, 12) opt=(1, 1, 12, 12, 12) max=(1, 1, 12, 12, 12) "
        "profile 1 min=(4, 1, 12, 12, 12) opt=(4, 1, 12, 12, 12) max=(4, 1, 12, 12, 12)"
    )
    assert described[2] == "logits OUTPUT FLOAT (-1, 30)"


def test_runner_refuses_an_engine_whose_io_differs_from_the_graph():
    trt = fake_trt("11.1.0.106")
    loaded = SimpleNamespace(engine=FakeEngine(trt, ("input_0", "output")))
    artifact = SimpleNamespace(input_names=("input_0",), output_names=("logits",))
    with pytest.raises(TensorRTError, match="does not match the ONNX graph"):
        create_runner(trt, Target("tensorrt", "cuda"), artifact, loaded)


def test_runner_reports_a_context_that_cannot_be_created():
    trt = fake_trt("11.1.0.106")
    engine = FakeEngine(trt)
    engine.context = None
    artifact = SimpleNamespace(input_names=("input_0", "input_1"), output_names=("logits",))
    with pytest.raises(TensorRTError, match="execution context"):
        create_runner(trt, Target("tensorrt", "cuda"), artifact, SimpleNamespace(engine=engine))


class RecordingContext:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.calls.append(("profile", index, stream))
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("shape", name, shape[0]))
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        return True


def test_runner_selects_the_batch_profile_before_setting_input_shapes():
    context = RecordingContext()
    runner = TensorRTRunner(
        Target("tensorrt", "cuda"),
        ("logits",),
        context=context,
        input_names=("input_0",),
        profiles=batch_profiles([1, 4]),
        _stream=SimpleNamespace(cuda_stream=7),
    )
    runner._outputs = {((b, 1, 2, 2, 2),): (torch.empty(b, 3),) for b in (1, 4)}  # no CUDA allocation
    for batch in (4, 4, 1):
        runner._bind((torch.zeros(batch, 1, 2, 2, 2),))
    assert context.calls == [
        ("profile", 1, 7), ("shape", "input_0", 4),
        ("shape", "input_0", 4),  # same profile: not selected again
        ("profile", 0, 7), ("shape", "input_0", 1),
    ]  # fmt: skip
    with pytest.raises(TensorRTError, match="batch 2 has no optimization profile"):
        runner._bind((torch.zeros(2, 1, 2, 2, 2),))


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
