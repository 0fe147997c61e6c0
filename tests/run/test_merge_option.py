"""`--merge partial|whole`: what the graph pass may merge in a user's module, wherever --layout takes --model."""

import json
import textwrap

import pytest
from typer.testing import CliRunner

from ccnbench.backends import parse_targets
from ccnbench.cli import app
from ccnbench.run import check, config, plan
from ccnbench.source import ModelSource

from helpers import FIXTURES

runner = CliRunner()
USER_MODELS = FIXTURES / "user_models.py"

pytest.importorskip("monai")

# Two small MONAI ResNet trunks whose stems differ (7 and 3), as a user's file would build them.
_NETS = textwrap.dedent(
    f"""
    import importlib.util

    _spec = importlib.util.spec_from_file_location("library_models", {str(FIXTURES / "library_models.py")!r})
    library_models = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(library_models)


    def stems():
        import torch
        from monai.networks.nets import ResNet

        torch.manual_seed(0)
        trunks = [
            ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=3, n_input_channels=1, feed_forward=False,
                   conv1_t_size=size)
            for size in (7, 3)
        ]
        return library_models._trained_like(library_models.TwoTrunks(trunks, 8, 3))
    """
)
PARTIAL = (
    "2 × ResNet (trunks.0, trunks.1): conv1 kept (4×1×7×7×7 vs 4×1×3×3×3); "
    "bn1, layer1–layer4 merged: 11 of 12 Conv → 11 grouped Conv"
)


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(_NETS)
    return f"{path}:stems"


@pytest.mark.slow  # 24 s on 2 cores: two MONAI ResNet-10 exports
def test_export_merges_differing_trunks_in_part_by_default_and_whole_branches_only_when_asked(nets, tmp_path):
    args = ["export", "--model", nets, "--input-shape", "1x16x16x16", "--branches", "2", "--layout", "all"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "partial"), "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert [(f["layout"], f["conv_count"]) for f in files] == [("kept", 24), ("merged", 13)]
    assert files[1]["merge"]["description"] == PARTIAL and files[1]["merge"]["mode"] == "partial"
    assert all(c["verdict"] == "pass" for f in files for c in f["validation"])
    result = runner.invoke(app, [*args, "--merge", "whole", "--out", str(tmp_path / "whole")])
    assert result.exit_code == 0, result.output
    assert (
        "not written, the branches stay kept: nothing to merge: branches differ: trunks.1.conv1.weight"
        in result.stdout
    )
    assert len(list((tmp_path / "whole").glob("*.onnx"))) == 1


@pytest.mark.slow  # 10 s: a check of the MONAI pair on two targets
def test_check_records_what_is_partial_in_details_merge(nets, artifacts_dir):
    source = ModelSource.from_factory(nets, (1, 16, 16, 16), 2, layout="merged")
    groups = plan.case_groups(
        [source], parse_targets("torch:cpu,ort:cpu"), ["fp32"], [2], artifacts_dir, threads=2
    )
    results = check.run(groups)
    assert all(r.passed for r in results), [r.message for r in results]
    note = results[0].details["merge"]
    assert note["merged"] is True and note["mode"] == "partial" and note["description"] == PARTIAL
    (group,) = note["groups"]
    assert group["rule"] == "partial" and group["fold"] == "channels"
    assert group["kept_children"] == [{"child": "conv1", "why": "4×1×7×7×7 vs 4×1×3×3×3"}]
    assert next(r for r in results if r.key.target == "ort:cpu").artifact["conv_count"] == 13


@pytest.mark.slow  # 19 s: exports of the MONAI pair in two merge modes
def test_the_merge_mode_travels_with_the_source_and_names_a_per_child_file(nets, tmp_path):
    source = ModelSource.from_factory(nets, (1, 16, 16, 16), 2, layout="merged", merge="partial-per-child")
    back = ModelSource.from_dict(json.loads(json.dumps(source.to_dict())))
    assert back == source and back.merge == "partial-per-child"
    assert (
        back.digest == ModelSource.from_factory(nets, (1, 16, 16, 16), 2, layout="merged").digest
    )  # one model
    artifact = back.artifact(artifacts_dir=tmp_path)
    assert "-merged-per-child-" in artifact.path.name and artifact.conv_count == 13


def test_sweep_flags_and_files_take_merge():
    flags = {
        "--model": f"{USER_MODELS}:two_view",
        "--input-shape": "1x10x10x10",
        "--branches": "2",
        "--merge": "whole",
    }
    (entry,) = config.from_command_line(flags, None).models
    assert entry["merge"] == "whole"
    sources = {g.source for g in plan.expand(config.from_command_line(flags, None), timed=False)}
    assert {s.merge for s in sources} == {"whole"} and {s.layout for s in sources} == {"kept", "merged"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["export", "--model", f"{USER_MODELS}:two_view", "--input-shape", "1x10x10x10", "--merge", "some"],
         "unknown --merge 'some'; choose from partial, whole"),
        (["export", "--variant", "model", "--preset", "tiny", "--merge", "whole"], "--merge says what the graph pass"),
        (["check", "--variant", "model", "--preset", "tiny", "--merge", "whole"], "it goes with --model"),
    ],
)  # fmt: skip
def test_merge_without_a_model_or_with_an_unknown_mode_is_a_usage_error(args, words, tmp_path):
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path)] if args[0] == "export" else [])])
    assert result.exit_code == 2, result.output
    assert words in result.output
