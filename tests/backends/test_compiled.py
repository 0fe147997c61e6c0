"""torch.compile members: each keeps its own compiled code in a shared process, and a case whose
CUDA graphs inductor skipped is marked, not hidden."""

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from ccnbench.backends import BuildOptions, Target
from ccnbench.backends.compiled import CompileBackend, graph_details
from ccnbench.models import spec_from_preset
from ccnbench.source import ModelSource


def test_a_skipped_graph_marks_the_case():
    assert graph_details(0) == {"cudagraph_skips": 0, "cudagraphs": True}
    marked = graph_details(2)
    assert marked["cudagraphs"] is False and marked["cudagraph_skips"] == 2
    assert "2 time(s)" in marked["warning"] and "ran without them" in marked["warning"]


def _graphs() -> int:
    """Graphs dynamo has compiled in this process (its own counter, never touched here)."""
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("inductor", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_preparing_a_second_member_does_not_recompile_the_first(inductor, monkeypatch, tmp_path):
    """Members of one contest share a process: kept, merged and kept again compile:cpu. Each
    compiles its own graph per batch size when prepared, and once the others are prepared,
    running the first again compiles nothing (dynamo's graph counter stays still)."""
    if not inductor:  # dynamo's caching is the subject; the eager backend skips inductor's C++ build
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    spec = spec_from_preset("tiny", "model", branches=2)
    options = BuildOptions(batch_sizes=(1, 2), threads=1, artifacts_dir=tmp_path)
    backend, target = CompileBackend(), Target("compile", "cpu")
    sources = [ModelSource.from_spec(spec, layout) for layout in ("kept", "merged", "kept")]
    inputs = {b: sources[0].make_inputs(b) for b in options.batch_sizes}

    start = _graphs()
    first = backend.prepare(sources[0], target, options)
    assert _graphs() - start == len(options.batch_sizes)  # compiled at build time, one per batch size
    others = [backend.prepare(source, target, options) for source in sources[1:]]
    prepared = _graphs()
    assert prepared - start == 3 * len(options.batch_sizes)  # the same module class compiles anew
    for runner in (first, *others):
        for batch in options.batch_sizes:
            runner.infer(inputs[batch])
    assert _graphs() == prepared  # nothing compiled again, the first member least of all
    for runner in (first, *others):
        runner.close()
