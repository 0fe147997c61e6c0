"""The three model sources: identity (labels, digests), per-process caches, and bad user input."""

import shutil
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch.utils.flop_counter import FlopCounterMode

from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.formats.onnx_export import export
from ccnbench.measure import oracle
from ccnbench.models import spec_from_preset
from ccnbench.source import FactorySource, ModelSource, OnnxFileSource, VariantSource

from helpers import FIXTURES

USER_MODELS = FIXTURES / "user_models.py"


def test_a_factory_runs_once_per_process_and_callers_get_independent_copies():
    source = ModelSource.from_factory(f"{USER_MODELS}:counted", (1, 8, 8, 8))
    fixture = next(
        m for name, m in sys.modules.items() if name.startswith("ccnbench_user_") and hasattr(m, "counted")
    )
    before = fixture.CALLS["counted"]
    a, b = source.module(), source.module_for("kept")
    assert source.output_names == ("output",) and source.flops_per_sample() > 0
    inputs = source.make_inputs(2)
    assert source.oracle(inputs)[0].dtype == torch.float64
    assert fixture.CALLS["counted"] - before == 1
    a.double()  # a backend casting its copy in place must not touch anyone else's
    assert next(b.parameters()).dtype == torch.float32
    torch.testing.assert_close(a(inputs[0].double()).float(), b(inputs[0]), rtol=1e-5, atol=1e-6)


def test_every_source_round_trips_and_crosses_to_workers_as_plain_data(tmp_path):
    spec = spec_from_preset("tiny", "feature", branches=2)
    artifact = export(spec, "merged", out_dir=tmp_path)
    sources = [
        ModelSource.from_spec(spec, "merged"),
        ModelSource.from_factory(f"{USER_MODELS}:two_view", (1, 10, 10, 10), 2),
        ModelSource.from_onnx(artifact.path),
    ]
    assert [type(s) for s in sources] == [VariantSource, FactorySource, OnnxFileSource]
    for source in sources:
        again = ModelSource.from_dict(source.to_dict())
        assert again == source and again.label == source.label and again.digest == source.digest
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelSource.from_dict({"kind": "pickle"})


def test_labels_name_the_file_never_the_users_absolute_path(tmp_path):
    source = ModelSource.from_factory(f"{USER_MODELS}:two_view", (1, 10, 10, 10), 2)
    assert source.label == "user:user_models.py:two_view"
    assert str(USER_MODELS.parent) not in source.label


def test_files_are_identified_by_their_content_not_their_path(tmp_path):
    spec = spec_from_preset("tiny", "feature", branches=2)
    first = export(spec, "kept", out_dir=tmp_path / "a").path
    copy = tmp_path / "b" / first.name
    copy.parent.mkdir()
    shutil.copy(first, copy)
    assert ModelSource.from_onnx(first).digest == ModelSource.from_onnx(copy).digest
    other = export(
        spec_from_preset("tiny", "feature", branches=2, seed=1), "kept", out_dir=tmp_path / "c"
    ).path
    shutil.copy(other, copy)  # the same path, edited: a different model
    assert ModelSource.from_onnx(copy).digest != ModelSource.from_onnx(first).digest
    user_file = tmp_path / "net.py"
    shutil.copy(USER_MODELS, user_file)
    before = ModelSource.from_factory(f"{user_file}:counted", (1, 8, 8, 8)).digest
    user_file.write_text(user_file.read_text() + "\n# edited\n")
    assert ModelSource.from_factory(f"{user_file}:counted", (1, 8, 8, 8)).digest != before


def test_a_factory_returning_something_else_than_a_module_is_a_clear_error():
    source = ModelSource.from_factory(f"{USER_MODELS}:not_a_module", (1, 8, 8, 8))
    with pytest.raises(CcnbenchError, match=r"returned str, not a torch\.nn\.Module"):
        source.module()


def test_a_user_file_with_a_syntax_error_is_a_usage_error_naming_the_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\ndef f(:\n    pass\n")
    with pytest.raises(UsageError, match=r"broken\.py line 3"):
        ModelSource.from_factory(f"{broken}:f", (1, 8, 8, 8))


def _graph_file(path, shapes):
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, s) for i, s in enumerate(shapes)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, s) for i, s in enumerate(shapes)]
    nodes = [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(len(shapes))]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("shapes", "words"),
    [
        ([[2, 1, 4, 4, 4]], "the batch dimension is fixed"),
        ([["N", 1, 4, 4, 4], ["N", 1, 2, 2, 2]], "inputs of different shapes"),
    ],
)
def test_onnx_files_ccnbench_cannot_feed_are_usage_errors(tmp_path, shapes, words):
    with pytest.raises(UsageError, match=words):
        ModelSource.from_onnx(_graph_file(tmp_path / "m.onnx", shapes))


def test_the_oracle_cache_is_read_back_and_a_damaged_file_is_recomputed(tmp_path, monkeypatch):
    source = ModelSource.from_spec(spec_from_preset("tiny", "early"))
    inputs = source.make_inputs(1, 0)
    oracle._memory.clear()  # an earlier test in this process may have computed it already
    expected = oracle.reference(source, inputs, 1, 0, tmp_path)
    (cached,) = (tmp_path / "oracle").glob("*.pt")
    calls = []
    monkeypatch.setattr(VariantSource, "oracle", lambda self, x: calls.append(1) or expected)
    oracle._memory.clear()
    oracle.reference(source, inputs, 1, 0, tmp_path)
    assert calls == []  # a valid file is used, not recomputed
    cached.write_bytes(b"not a torch file")
    oracle._memory.clear()
    again = oracle.reference(source, inputs, 1, 0, tmp_path)
    assert calls == [1]
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    assert torch.load(cached, weights_only=True)["outputs"]  # rewritten whole


def test_a_merged_layout_without_branches_says_it_is_the_kept_graph():
    early = ModelSource.from_spec(spec_from_preset("tiny", "early"), "merged")
    note = early.layout_note()
    assert note["merged"] is False and "no parallel branches" in note["reason"]
    assert ModelSource.from_spec(spec_from_preset("tiny", "early"), "kept").layout_note() is None
    assert ModelSource.from_spec(spec_from_preset("tiny", "feature"), "merged").layout_note() is None


def test_a_merged_users_model_counts_only_its_own_forward():
    """Building the merged module runs the merge pass's proofs; none of them is the model's work."""
    kept = ModelSource.from_factory(f"{USER_MODELS}:two_view", (1, 10, 10, 10), 2)
    merged = ModelSource.from_factory(f"{USER_MODELS}:two_view", (1, 10, 10, 10), 2, layout="merged")
    module = merged.module()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*merged.make_inputs(1))
    assert merged.flops_per_sample() == counter.get_total_flops() == kept.flops_per_sample()
