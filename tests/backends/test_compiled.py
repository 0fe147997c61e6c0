"""compile-graphs: a case inductor compiled without CUDA graphs is marked, not hidden."""

import pytest

from ccnbench.backends import compiled
from ccnbench.backends.compiled import cudagraph_skips, graph_details


def test_cudagraph_skips_reads_inductors_counter(monkeypatch):
    from torch._dynamo.utils import counters

    before = cudagraph_skips()
    counters["inductor"]["cudagraph_skips"] += 2
    try:
        assert cudagraph_skips() == before + 2
    finally:
        counters["inductor"]["cudagraph_skips"] -= 2


def test_a_skipped_graph_marks_the_case():
    assert graph_details(0) == {"cudagraph_skips": 0, "cudagraphs": True}
    marked = graph_details(2)
    assert marked["cudagraphs"] is False and marked["cudagraph_skips"] == 2
    assert "ran without them" in marked["warning"]
    assert compiled.CompileGraphsBackend.mode == "reduce-overhead"


@pytest.mark.parametrize("inductor", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_members_of_one_process_keep_each_others_compiled_code(inductor, monkeypatch, tmp_path):
    """Kept and merged compile:cpu in one process, as in a contest: once every member is prepared,
    running any of them again compiles nothing (dynamo's graph counter stays still)."""
    import functools

    import torch
    from torch._dynamo.utils import counters

    from ccnbench.backends import BuildOptions, Target
    from ccnbench.backends.compiled import CompileBackend
    from ccnbench.models import spec_from_preset
    from ccnbench.source import ModelSource

    if not inductor:  # dynamo's caching is the subject; the eager backend skips inductor's C++ build
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    spec = spec_from_preset("tiny", "model", branches=2)
    options = BuildOptions(batch_sizes=(1, 2), threads=1, artifacts_dir=tmp_path)
    backend, target = CompileBackend(), Target("compile", "cpu")
    sources = [ModelSource.from_spec(spec, layout) for layout in ("kept", "merged", "kept")]
    start = counters["stats"]["unique_graphs"]
    runners = [backend.prepare(source, target, options) for source in sources]
    prepared = counters["stats"]["unique_graphs"]
    assert prepared - start == 3 * 2  # every member compiled its own graph per batch size
    inputs = {b: sources[0].make_inputs(b) for b in options.batch_sizes}
    for runner in runners:
        for batch in options.batch_sizes:
            runner.infer(inputs[batch])
    assert counters["stats"]["unique_graphs"] == prepared  # nothing compiled again
    for runner in runners:
        runner.close()
