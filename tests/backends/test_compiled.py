"""compile-graphs: a case inductor compiled without CUDA graphs is marked, not hidden."""

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
