"""The memory-format option of the PyTorch targets: its place in a case's key, its expansion,
its runner, and (on a GPU) the convolution routing it exists to change."""

import dataclasses

import pytest
import torch

from ccnbench.answers.recommend import recommend
from ccnbench.backends import parse_targets
from ccnbench.backends.torch_eager import conv_backends
from ccnbench.errors import UsageError
from ccnbench.models import build, spec_from_preset
from ccnbench.results import CaseKey, CaseResult
from ccnbench.run import check, contest, plan, selection
from ccnbench.run.config import SweepConfig
from ccnbench.source import ModelSource

CL3D = "channels_last_3d"


def _plan(artifacts, targets="torch:cpu,compile:cpu,ort:cpu", formats=("contiguous", CL3D), variant="model"):
    sources = selection.sources(preset="tiny", variants=variant, layouts_="merged")
    return plan.case_groups(
        sources, parse_targets(targets), ["fp32"], [1, 2], artifacts, memory_formats=formats
    )


def test_keys_written_before_the_option_match_default_keys():
    old = {
        "model": "m",
        "digest": "d",
        "layout": "merged",
        "target": "torch:cuda",
        "precision": "fp32",
        "batch": 32,
    }
    key = CaseKey(**old)
    assert key == CaseKey("m", "d", "merged", "torch:cuda", "fp32", 32, "contiguous")
    assert key.to_dict() == old  # the default stays out of new files, so old and new keys are equal
    converted = dataclasses.replace(key, memory_format=CL3D)
    assert converted != key and CaseKey(**converted.to_dict()) == converted
    assert str(converted) == f"{key}/{CL3D}" and converted.group != key.group
    loaded = CaseResult.from_dict(CaseResult(converted, "ok").to_dict())
    assert loaded.key == converted


def test_plan_runs_torch_targets_once_per_format_and_file_formats_once(tmp_path):
    groups = _plan(tmp_path)
    slots = sorted((str(g.target), g.options.memory_format) for g in groups)
    assert slots == [
        ("compile:cpu", "channels_last_3d"),
        ("compile:cpu", "contiguous"),
        ("ort:cpu", "contiguous"),
        ("torch:cpu", "channels_last_3d"),
        ("torch:cpu", "contiguous"),
    ]
    assert len({k for g in groups for k in g.case_keys()}) == 10  # every case its own key
    only = _plan(tmp_path, formats=(CL3D,))
    assert {(str(g.target), g.options.memory_format) for g in only} == {
        ("torch:cpu", CL3D), ("compile:cpu", CL3D), ("ort:cpu", "contiguous"),
    }  # fmt: skip


def test_unknown_memory_format_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown memory format 'nhwc'"):
        _plan(tmp_path, formats=("nhwc",))
    with pytest.raises(UsageError, match="memory format"):
        SweepConfig.from_dict({"memory_formats": "contiguous,nhwc"})
    config = SweepConfig.from_dict({"memory_formats": "channels_last_3d"})
    assert config.memory_formats == (CL3D,) and SweepConfig.from_dict(config.to_dict()) == config
    assert SweepConfig.from_dict({}).memory_formats == ("contiguous",)


def test_channels_last_runner_holds_converted_weights_and_agrees(tmp_path):
    (group,) = [g for g in _plan(tmp_path, targets="torch:cpu") if g.options.memory_format == CL3D]
    (first, second) = check.run([group])
    assert first.passed and second.passed, first.agreement.to_dict()
    assert first.key.memory_format == CL3D and first.details["memory_format"] == CL3D
    from ccnbench.backends.torch_eager import module_for_target

    module, _ = module_for_target(group.source, group.target, "fp32", CL3D)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs)


def test_conv_backends_names_the_kernel_of_every_convolution():
    spec = spec_from_preset("tiny", "model")
    inputs = ModelSource.from_spec(spec).make_inputs(2)
    picked = conv_backends(build(spec, "merged"), inputs)
    assert len(picked) == spec.depth and all(p in {"Mkldnn", "Slow3d"} for p in picked)


def test_contest_pairs_a_converted_member_with_its_contiguous_self(tmp_path):
    class M:
        def __init__(self, g):
            self.group = g

    members = [M(g) for g in _plan(tmp_path, targets="torch:cpu,ort:cpu")]
    names = [(str(m.group.target), m.group.options.memory_format) for m in members]
    pairs = {(names[a], names[b]) for a, b in contest.partners(members)}
    assert pairs == {
        (("ort:cpu", "contiguous"), ("torch:cpu", "contiguous")),
        (("torch:cpu", CL3D), ("torch:cpu", "contiguous")),
    }


def _converted(case, target="torch:cuda"):
    return dataclasses.replace(case, key=dataclasses.replace(case.key, target=target, memory_format=CL3D))


def test_recommend_chooses_between_memory_formats_and_names_the_format():
    from helpers import contest_cases

    faster = contest_cases({("torch:cuda", "merged"): 3.0, ("ort:cuda", "merged"): 1.5})
    cases = [c if c.key.target == "torch:cuda" else _converted(c) for c in faster]
    (rec,) = recommend(cases)
    assert rec.best.label == f"torch:cuda {CL3D} merged fp32"
    assert rec.runner_up.label == "torch:cuda merged fp32" and not rec.runner_up_ratio.tie
    assert rec.to_dict()["best"]["memory_format"] == CL3D

    tied = contest_cases({("torch:cuda", "merged"): 2.0, ("ort:cuda", "merged"): 1.98}, noise=0.005)
    cases = [c if c.key.target == "torch:cuda" else _converted(c) for c in tied]
    (rec,) = recommend(cases)
    assert rec.best.label == "torch:cuda merged fp32" and "simpler format" in rec.line()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_routes_the_merged_depthwise_conv_by_memory_format(precision):
    """The rule in torch_eager's docstring, asked of the real CUDA build: the merged first
    convolution (one input channel per group) is PyTorch's depthwise kernel in NCDHW and cuDNN in
    channels_last_3d; every other convolution is cuDNN either way."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    spec = spec_from_preset("tiny", "model", branches=3)
    inputs = [x.cuda().to(dtype) for x in ModelSource.from_spec(spec).make_inputs(2)]
    merged = build(spec, "merged").cuda().to(dtype).eval()
    kept = build(spec, "kept").cuda().to(dtype).eval()
    assert conv_backends(merged, inputs) == ["CudaDepthwise3d"] + ["Cudnn"] * (spec.depth - 1)
    assert set(conv_backends(kept, inputs)) == {"Cudnn"}
    converted = merged.to(memory_format=torch.channels_last_3d)
    assert conv_backends(converted, inputs) == ["Cudnn"] * spec.depth


def test_the_bench_flag_sets_the_formats_and_a_sweep_file_decides():
    from ccnbench.run.config import from_command_line

    config = from_command_line({"--memory-format": "contiguous,channels_last_3d"}, None)
    assert config.memory_formats == ("contiguous", CL3D)
    with pytest.raises(UsageError, match="--memory-format"):
        from_command_line({"--memory-format": CL3D}, "ci-quick")
