"""One typed route for configuration: sweep files, bench flags and stored runs."""

import dataclasses

import pytest
from typer.testing import CliRunner

from ccnbench.cli import app
from ccnbench.errors import UsageError
from ccnbench.measure.agreement import Tolerance
from ccnbench.measure.timing import QUICK
from ccnbench.run import check, config, plan

runner = CliRunner()


@pytest.mark.parametrize("name", sorted(p.stem for p in config.SWEEPS_DIR.glob("*.toml")))
def test_bundled_sweeps_round_trip(name):
    c = config.load_config(name)
    assert config.SweepConfig.from_dict(c.to_dict()) == c


def test_a_config_with_every_field_set_round_trips():
    c = config.SweepConfig(
        name="all", models=({"preset": "tiny", "variants": "early", "seed": 3}, {"model": "m:f", "input_shape": "1x4x4x4"}),
        targets=("ort:cpu",), precisions=("fp16",), batches=(2, 4), protocol=dataclasses.replace(QUICK, min_iterations=7),
        timeout=12.5, transfers=True, opset=17, threads=3, artifacts="elsewhere", atol=1e-3, rtol=1e-2,
        per_output={"logits": Tolerance(1e-3, 1e-4)}, seed=9, isolation="model", dynamic_batch=True, shard=(2, 3),
    )  # fmt: skip
    assert config.SweepConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"timeout": "x"}, "'timeout' must be a number, got 'x'"),
        ({"threads": "four"}, "'threads' must be an integer, got 'four'"),
        ({"quick": "yes"}, "'quick' must be true or false"),
        ({"opset": True}, "'opset' must be an integer"),
        ({"models": [{"preset": 3}]}, "'preset' must be a string, got 3"),
        ({"protocol": {"min_iterations": "many"}}, "[protocol] 'min_iterations' must be int"),
        ({"protocol": {"min_seconds": True}}, "[protocol] 'min_seconds' must be float"),
        ({"tolerance": {"atol": "small"}}, "[tolerance] 'atol' must be a number"),
        ({"tolerance": {"outputs": {"logits": ["a"]}}}, "'logits' must be [atol, rtol]"),
        ({"shard": "3/2"}, "--shard must be K/N"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"precisions": "int4"}, "unknown precision 'int4'"),
    ],
)
def test_sweep_file_values_are_type_checked_with_the_field_named(data, words):
    with pytest.raises(UsageError) as err:
        config.SweepConfig.from_dict(data, source="my.toml")
    assert words in str(err.value) and str(err.value).startswith("my.toml: ")


def test_the_protocol_is_built_from_the_protocol_dataclass():
    c = config.SweepConfig.from_dict({"quick": True, "protocol": {"max_seconds": 2}})
    assert c.protocol == dataclasses.replace(QUICK, max_seconds=2.0)


def test_flags_fill_in_from_the_one_set_of_defaults():
    c = config.from_command_line({"--targets": "ort:cpu", "--quick": False, "--onnx": []}, None)
    assert c == config.SweepConfig(name="bench", targets=("ort:cpu",))
    flags = {"--preset": "tiny", "--batch": "2", "--quick": True, "--artifacts": "a", "--shard": "1/2"}
    c = config.from_command_line(flags, None)
    assert (c.batches, c.protocol, c.artifacts, c.shard, c.models) == (
        (2,),
        QUICK,
        "a",
        (1, 2),
        ({"preset": "tiny"},),
    )


def test_a_sweep_file_takes_the_flags_that_do_not_change_what_it_runs():
    c = config.from_command_line(
        {"--artifacts": "/tmp/x", "--name": "mine", "--quick": True, "--shard": "2/3"}, "cpu-default"
    )
    assert (c.artifacts, c.name, c.protocol, c.shard) == ("/tmp/x", "mine", QUICK, (2, 3))
    assert c.targets == config.load_config("cpu-default").targets


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config", "ci-quick", "--timeout", "5"], "--timeout cannot be combined with --config"),
        (["--resume", "results/x", "--out", "o"], "--out cannot be combined with --resume"),
        (["--resume", "results/x", "--quick"], "--quick cannot be combined with --resume"),
        (["--resume", "results/x", "--name", "n"], "--name cannot be combined with --resume"),
        (["--resume", "results/x", "--config", "ci-quick"], "--config cannot be combined with --resume"),
        (["--resume", "results/x", "--shard", "1/2"], "--shard cannot be combined with --resume"),
        (["--shard", "0/2"], "--shard must be K/N"),
        (["--timeout", "-1"], "timeout must be positive"),
    ],
)
def test_every_bench_flag_is_honoured_or_refused_by_name(args, words):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error: ") and words in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_check_flags_take_the_route_bench_flags_take(tmp_path):
    """``check`` and ``bench`` flags become one SweepConfig: the same case groups (check's untimed),
    and check's tolerance flags land in the configuration's [tolerance] table."""
    flags = {"--preset": "tiny", "--variant": "early", "--layout": "all", "--targets": "ort:cpu",
             "--batch": "1,2", "--artifacts": tmp_path}  # fmt: skip
    checked = check.planned({**flags, "--atol": 1e-3, "--tol": ["logits=1e-2,1e-3"]})
    benched = plan.expand(config.from_command_line(flags, None))
    assert [g.case_keys() for g in checked] == [g.case_keys() for g in benched] and len(checked) == 2
    assert all(g.protocol is None for g in checked) and all(g.protocol is not None for g in benched)
    assert {(g.atol, g.per_output["logits"]) for g in checked} == {(1e-3, Tolerance(1e-2, 1e-3))}
    with pytest.raises(UsageError, match="--tol 'logits': expected name=atol"):
        check.planned({**flags, "--tol": ["logits"]})
