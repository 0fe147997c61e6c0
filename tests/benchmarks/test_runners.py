"""pytest-benchmark suite: every variant × layout on ort:cpu and torch:cpu at the tiny preset.

Run with `make bench-ci`; its JSON lands in results/bench-ci/ and `ccnbench compare` reads it.
Inputs are staged once and every call is the runner's plain `infer`, as in `ccnbench bench`.
"""

import pytest

from ccnbench.backends import BACKENDS, BuildOptions, Target
from ccnbench.measure.timing import stage
from ccnbench.models import VARIANTS, spec_from_preset
from ccnbench.source import ModelSource

TARGETS = [Target("torch", "cpu"), Target("ort", "cpu")]


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    made = {}
    yield made
    for runner in made.values():
        runner.close()


@pytest.mark.parametrize("target", TARGETS, ids=str)
@pytest.mark.parametrize("layout", ["kept", "merged"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_runner_latency(benchmark, runners, tmp_path_factory, variant, layout, target):
    source = ModelSource.from_spec(spec_from_preset("tiny", variant), layout)
    key = (variant, layout, str(target))
    if key not in runners:
        options = BuildOptions(
            batch_sizes=(8,), threads=2, artifacts_dir=tmp_path_factory.getbasetemp() / "artifacts"
        )
        runners[key] = BACKENDS[target.backend].prepare(source, target, options)
    runner = runners[key]
    staged = stage(source.make_inputs(8), runner)
    benchmark.extra_info.update({"model": source.label, "layout": layout, "target": str(target), "batch": 8})
    outputs = benchmark(runner.infer, staged)
    assert outputs[0].shape == (8, 30)
