"""ONNX Runtime backend: provider options, I/O binding, and the CPU path end to end."""

from types import SimpleNamespace

import torch

from ccnbench.backends import BuildOptions, Target
from ccnbench.backends.onnxruntime import OrtBackend, profile_shapes, session_providers
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
