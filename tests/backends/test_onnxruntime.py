"""ONNX Runtime backend: provider options, I/O binding, and the CPU path end to end."""

from types import SimpleNamespace

import pytest
import torch

from ccnbench.backends import BuildOptions, Target
from ccnbench.backends.onnxruntime import (
    NO_CPU_FALLBACK_KEY,
    NO_SYNC_KEY,
    OrtBackend,
    OrtRunner,
    _create_session,
    cpu_node_names,
    cpu_nodes_from_profile,
    profile_shapes,
    run_options,
    session_options,
    session_providers,
)
from ccnbench.errors import CcnbenchError
from ccnbench.models import spec_from_preset
from ccnbench.source import ModelSource


def test_tensorrt_provider_profile_covers_requested_batches():
    shapes = profile_shapes(["input_0", "input_1"], (1, 12, 12, 12), [8, 1, 32])
    assert shapes == {
        "trt_profile_min_shapes": "input_0:1x1x12x12x12,input_1:1x1x12x12x12",
        "trt_profile_opt_shapes": "input_0:32x1x12x12x12,input_1:32x1x12x12x12",
        "trt_profile_max_shapes": "input_0:32x1x12x12x12,input_1:32x1x12x12x12",
    }


def test_cuda_providers_run_on_the_runners_stream_with_the_chosen_conv_search(tmp_path):
    stream = SimpleNamespace(cuda_stream=123456)
    options = BuildOptions(cudnn_conv_algo_search="HEURISTIC", artifacts_dir=tmp_path, workspace_mib=512)
    cuda = session_providers(Target("ort", "cuda"), options, stream, {})
    assert cuda[0][0] == "CUDAExecutionProvider"
    assert cuda[0][1]["user_compute_stream"] == "123456"
    assert cuda[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda[0][1]["use_tf32"] == "0"  # fp32 means fp32
    assert cuda[0][1]["arena_extend_strategy"] == "kSameAsRequested"  # memory as asked, not rounded up
    fp16 = session_providers(Target("ort", "cuda"), BuildOptions(precision="fp16"), stream, {})
    assert fp16[0][1]["use_tf32"] == "1"
    trt = session_providers(Target("ort", "tensorrt"), options, stream, {"trt_profile_min_shapes": "x"})
    names = [p[0] if isinstance(p, tuple) else p for p in trt]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_options = trt[0][1]
    assert trt_options["trt_engine_cache_enable"] == "True"
    assert trt_options["trt_engine_cache_path"].startswith(str(tmp_path))
    assert trt_options["trt_max_workspace_size"] == str(512 * 2**20)
    assert trt_options["trt_fp16_enable"] == "False"  # precision comes from the artifact
    assert session_providers(Target("ort", "cpu"), options, None, {}) == ["CPUExecutionProvider"]


def test_cpu_runner_binds_io_once_and_handles_new_batch_sizes(artifacts_dir):
    source = ModelSource.from_spec(spec_from_preset("tiny", "multitask", branches=2), "merged")
    options = BuildOptions(batch_sizes=(1, 4), threads=2, artifacts_dir=artifacts_dir)
    with OrtBackend().prepare(source, Target("ort", "cpu"), options) as runner:
        assert runner.details["providers"] == ["CPUExecutionProvider"]
        expected = {}
        for batch in (1, 4, 1):
            inputs = list(source.make_inputs(batch))
            logits, regression = runner.infer(inputs)
            assert logits.shape == (batch, 30) and regression.shape == (batch, 1)
            again = runner.infer(inputs)  # same tensors: no rebinding, same buffers
            assert again[0].data_ptr() == logits.data_ptr()
            with torch.no_grad():
                want = source.module()(*inputs)
            torch.testing.assert_close(logits, want[0], rtol=1e-4, atol=1e-5)
            expected.setdefault(batch, logits.clone())
            torch.testing.assert_close(logits, expected[batch])
    assert runner.session is None  # closed by the context manager


def test_cuda_runs_skip_the_providers_end_of_run_synchronisation():
    import onnxruntime as ort

    cuda = run_options(ort, Target("ort", "cuda"))
    assert cuda.get_run_config_entry(NO_SYNC_KEY) == "1"
    assert run_options(ort, Target("ort", "tensorrt")).get_run_config_entry(NO_SYNC_KEY) == "1"
    with pytest.raises(Exception, match=NO_SYNC_KEY):  # the CPU keeps ORT's default
        run_options(ort, Target("ort", "cpu")).get_run_config_entry(NO_SYNC_KEY)


def test_gpu_sessions_forbid_silent_cpu_fallback():
    import onnxruntime as ort

    so = session_options(ort, Target("ort", "cuda"), threads=2)
    assert so.get_session_config_entry(NO_CPU_FALLBACK_KEY) == "1"
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    allowed = session_options(ort, Target("ort", "cuda"), threads=2, cpu_fallback=True)
    with pytest.raises(Exception, match=r"session\.disable_cpu_ep_fallback"):
        allowed.get_session_config_entry(NO_CPU_FALLBACK_KEY)


@pytest.fixture
def conv_file(tmp_path):
    from ccnbench.formats.onnx_export import tiny_conv_onnx

    path = tmp_path / "conv.onnx"
    path.write_bytes(tiny_conv_onnx())
    return path


def test_a_cpu_session_allows_the_cpu_provider(conv_file):
    import onnxruntime as ort

    session, cpu_fallback = _create_session(ort, conv_file, Target("ort", "cpu"), 2, ["CPUExecutionProvider"])
    assert cpu_fallback is True and session.get_providers() == ["CPUExecutionProvider"]


def test_a_file_onnx_runtime_cannot_load_is_one_line_naming_it(tmp_path):
    import onnxruntime as ort

    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07 not a protobuf\n of a model")
    with pytest.raises(CcnbenchError, match=r"^onnxruntime could not load damaged\.onnx: ") as raised:
        _create_session(ort, damaged, Target("ort", "cpu"), 2, ["CPUExecutionProvider"])
    assert "\n" not in str(raised.value)


def test_only_the_cpu_fallback_refusal_is_retried_with_fallback_allowed(conv_file):
    """A GPU session starts with CPU fallback disabled. Real ONNX Runtime refuses that setting
    beside an explicit CPU provider with another error: that one is reported, not retried."""
    import onnxruntime as ort

    with pytest.raises(CcnbenchError, match="Conflicting session configuration") as raised:
        _create_session(ort, conv_file, Target("ort", "cuda"), 2, ["CPUExecutionProvider"])
    assert "conv.onnx" in str(raised.value)


@pytest.mark.gpu
def test_a_graph_the_cuda_provider_runs_whole_keeps_fallback_disabled(conv_file):
    import onnxruntime as ort

    session, cpu_fallback = _create_session(
        ort, conv_file, Target("ort", "cuda"), 2, ["CUDAExecutionProvider"]
    )
    assert cpu_fallback is False and session.get_providers()[0] == "CUDAExecutionProvider"


def test_runner_passes_its_run_options_to_every_timed_run(artifacts_dir):
    import onnxruntime as ort

    source = ModelSource.from_spec(spec_from_preset("tiny", "early", branches=2), "kept")
    options = BuildOptions(batch_sizes=(1,), threads=2, artifacts_dir=artifacts_dir)
    with OrtBackend().prepare(source, Target("ort", "cpu"), options) as runner:
        seen = []
        session = runner.session

        class Spy:
            def __getattr__(self, name):
                return getattr(session, name)

            def run_with_iobinding(self, binding, run_options=None):
                seen.append(run_options)
                return session.run_with_iobinding(binding, run_options)

        # The CUDA runner's options, on the CPU session: the key is harmless there.
        runner._run_options = run_options(ort, Target("ort", "cuda"))
        runner.session = Spy()
        inputs = list(source.make_inputs(1))
        runner.infer(inputs)  # first call: binds, one synchronous run for the output shapes
        runner.infer(inputs)
        timed = [o for o in seen if o is not None]
        assert len(timed) == 2 and all(o.get_run_config_entry(NO_SYNC_KEY) == "1" for o in timed)
        assert seen.count(None) == 1  # the output-shape run stays synchronous


def test_tensorrt_provider_gets_one_profile_and_one_cache_per_batch(tmp_path):
    shapes = profile_shapes(["input_0"], (1, 12, 12, 12), [4])
    assert set(shapes.values()) == {"input_0:4x1x12x12x12"}  # min = opt = max
    options = BuildOptions(artifacts_dir=tmp_path)
    trt = session_providers(Target("ort", "tensorrt"), options, None, shapes, batch=4)[0][1]
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt" / "batch-4")
    assert trt["trt_timing_cache_path"] == trt["trt_engine_cache_path"]
    assert trt["trt_profile_opt_shapes"] == "input_0:4x1x12x12x12"


def test_runner_with_a_session_per_batch_runs_each_batch_on_its_own(artifacts_dir):
    import onnxruntime as ort

    source = ModelSource.from_spec(spec_from_preset("tiny", "early", branches=2), "merged")
    artifact = source.artifact("fp32", "fp32", 18, artifacts_dir)
    ran: list[int] = []

    class Tagged:
        def __init__(self, batch):
            self.batch = batch
            self.session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run_with_iobinding(self, binding, run_options=None):
            ran.append(self.batch)
            return self.session.run_with_iobinding(binding, run_options)

    sessions = {1: Tagged(1), 4: Tagged(4)}
    runner = OrtRunner(
        Target("ort", "cpu"),
        artifact.output_names,
        session=sessions[1],
        sessions=sessions,
        input_names=artifact.input_names,
        _run_options=ort.RunOptions(),
    )
    for batch in (4, 1, 4):
        inputs = list(source.make_inputs(batch))
        (logits,) = runner.infer(inputs)
        with torch.no_grad():
            want = source.module()(*inputs)  # a single-output model returns the tensor itself
        torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
    assert set(ran) == {1, 4} and ran[0] == 4 and ran[-1] == 4
    with pytest.raises(CcnbenchError, match="no TensorRT provider session for batch 2"):
        runner.infer(list(source.make_inputs(2)))
    runner.close()
    assert runner.sessions == {}


def test_nodes_placed_on_the_cpu_are_named_from_the_profile():
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "/conv/Conv_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "/Shape_kernel_time", "args": {"op_name": "Shape", "provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "/Shape_kernel_time", "args": {"op_name": "Shape", "provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "/Gather_fence_before", "args": {"op_name": "Gather", "provider": "CPUExecutionProvider"}},
    ]  # fmt: skip
    assert cpu_nodes_from_profile(events) == ["/Shape (Shape)", "/Gather_fence_before (Gather)"]
    assert cpu_nodes_from_profile(events[:2]) == []


def test_a_real_profile_names_every_node_a_cpu_session_ran(artifacts_dir):
    import onnx
    import onnxruntime as ort

    source = ModelSource.from_spec(spec_from_preset("tiny", "early", branches=2), "kept")
    artifact = source.artifact("fp32", "fp32", 18, artifacts_dir)
    names = cpu_node_names(ort, artifact, source, 1, ["CPUExecutionProvider"])
    graph_ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    ran = {name.rsplit(" (", 1)[1].rstrip(")") for name in names}
    assert names and "Conv" in ran and ran <= graph_ops | {"FusedConv", "MemcpyToHost", "MemcpyFromHost"}
    assert not list(artifacts_dir.glob("ort-profile-*"))  # the profile file is removed
