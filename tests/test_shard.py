"""Sweeps split across machines: disjoint deterministic parts, put back together as one run."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from ccnbench import environment, results, shard
from ccnbench.cli import app
from ccnbench.errors import ResultsError
from ccnbench.run import config, plan, sweep

from helpers import PAIR, case, run

runner = CliRunner()


def _groups():
    return plan.expand_all(config.load_config("cpu-default"))


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_parts_are_disjoint_cover_the_sweep_and_keep_contests_whole(parts):
    groups = _groups()
    chosen = [plan.select(groups, k, parts) for k in range(1, parts + 1)]
    labels = [g.label for part in chosen for g in part]
    assert sorted(labels) == sorted(g.label for g in groups) and len(set(labels)) == len(labels)
    for part in chosen:  # all layouts and targets of a model at a precision are in one part
        others = [g for p in chosen if p is not part for g in p]
        assert not {plan.contest_key(g) for g in part} & {plan.contest_key(g) for g in others}
    assert chosen == [plan.select(_groups(), k, parts) for k in range(1, parts + 1)]  # deterministic


def test_more_parts_than_contests_leaves_valid_empty_parts(tmp_path):
    c = config.SweepConfig.from_dict({"preset": "tiny", "variants": "early", "targets": "ort:cpu", "shard": "2/2",
                                      "artifacts": str(tmp_path)})  # fmt: skip
    assert (
        plan.expand(c) == [] and len({plan.contest_key(g) for g in plan.expand_all(c)}) == 1
    )  # kept + merged: one contest
    assert sweep.start(c, tmp_path / "run").config["shard"] == "2/2"  # an empty part is still a part


def test_parts_are_balanced_by_expected_cost():
    groups = _groups()
    loads = [sum(map(plan.expected_cost, plan.select(groups, k, 2))) for k in (1, 2)]
    heaviest = max(sum(plan.expected_cost(g) for g in groups if plan.contest_key(g) == key)
                   for key in {plan.contest_key(g) for g in groups})  # fmt: skip
    assert abs(loads[0] - loads[1]) <= heaviest * (
        1 + 1e-9
    )  # greedy largest-first: off by one contest at most


def _part(k, n, *cases, name="s", commit="abc"):
    r = run(*cases, run_id=f"{name}-{k}")
    env = replace(r.environment, git_commit=commit)
    return replace(
        r, environment=env, config={"name": name, "targets": ["ort:cpu"], "shard": f"{k}/{n}"}, complete=True
    )


def test_combine_merges_the_parts_and_refuses_bad_sets():
    a, b = case("ort:cpu", 1.0, model="a"), case("ort:cpu", 1.0, model="b")
    (whole,) = shard.combine([_part(2, 2, b), _part(1, 2, a)])
    assert [c.key.model for c in whole.cases] == ["a", "b"] and whole.complete and "shard" not in whole.config
    with pytest.raises(ResultsError, match="shard\\(s\\) 2/2 are missing"):
        shard.combine([_part(1, 2, a)])
    with pytest.raises(ResultsError, match="shard 1/2 of 's' is given more than once"):
        shard.combine([_part(1, 2, a), _part(1, 2, a), _part(2, 2, b)])
    other = _part(2, 2, b)
    other = replace(other, config={**other.config, "targets": ["torch:cpu"]})
    with pytest.raises(ResultsError, match="configurations differ"):
        shard.combine([_part(1, 2, a), other])
    with pytest.raises(ResultsError, match="different commits"):
        shard.combine([_part(1, 2, a), _part(2, 2, b, commit="def")])
    plain = run(a)
    assert shard.combine([plain]) == [plain]


@pytest.mark.slow  # three sweeps end to end; the tests above cover selection and combining
@pytest.mark.usefixtures("quick_is_one_process")
def test_shards_run_apart_report_exactly_like_the_whole_sweep(tmp_path, artifacts_dir):
    base = ["bench", "--preset", "tiny", "--variant", "early,model", "--layout", "all", "--targets",
            "torch:cpu,ort:cpu", "--batch", "1", "--quick", "--artifacts", str(artifacts_dir), "--no-report"]  # fmt: skip
    dirs = {"whole": tmp_path / "whole", "1": tmp_path / "parts" / "one", "2": tmp_path / "parts" / "two"}
    for part, out in dirs.items():
        extra = [] if part == "whole" else ["--shard", f"{part}/2"]
        result = runner.invoke(app, [*base, *extra, "--out", str(out)])
        assert result.exit_code == 0, result.output
    one, two = results.load(dirs["1"]), results.load(dirs["2"])
    assert one.config["shard"] == "1/2" and two.config["shard"] == "2/2"
    assert one.cases and two.cases and not {c.key for c in one.cases} & {c.key for c in two.cases}
    (whole,) = shard.load_runs([dirs["whole"]])
    for given in ([dirs["1"], dirs["2"]], [tmp_path / "parts"]):  # the directories, or their parent
        (combined,) = shard.load_runs(given)
        assert sorted((str(c.key), c.verdict) for c in combined.cases) == sorted(
            (str(c.key), c.verdict) for c in whole.cases
        )
    result = runner.invoke(app, ["report", str(dirs["1"]), str(dirs["2"]), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["recommend", str(dirs["1"])])
    assert result.exit_code == 1 and "shard(s) 2/2 are missing" in result.output
    result = runner.invoke(
        app, ["compare", str(dirs["whole"]), str(tmp_path / "parts"), "--threshold", "99%"]
    )
    # The whole run and the shards' parent compare case for case: nothing missing on either side.
    assert "error" not in result.output and "missing" not in result.output.lower(), result.output


# --- shards measured on different machines -------------------------------------------------------

XEON = "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
#: How the fixture's AMD EPYC and the Xeon its second shard is moved to differ.
APART = "shards were measured on different machines (differ in: cpu, cpu_vendor, cpu_model_number)"


def _shards(folder, run, *, elsewhere=False, failing=None):
    """``run`` (a real run) split in two shards by model, contests whole, written as `bench --shard`
    writes them; with ``elsewhere`` the second was measured on a Xeon; ``failing``: the key of a case
    whose agreement fails in it."""
    models = sorted({c.key.model for c in run.cases})
    for k, chosen in ((1, models[:2]), (2, models[2:])):
        cases = tuple(_failed(c) if str(c.key) == failing else c for c in run.cases if c.key.model in chosen)
        env = run.environment
        if elsewhere and k == 2:
            env = replace(env, cpu=XEON, cpu_vendor="GenuineIntel", cpu_model_number="106")
            env = replace(env, machine_id=environment.machine_id(env))
        part = replace(run, run_id=f"{folder.name}-{k}", environment=env,
                       config={**run.config, "shard": f"{k}/2"}, cases=cases)  # fmt: skip
        results.save(part, folder / str(k))
    return folder


def _failed(c):
    outputs = tuple(replace(o, passed=False) for o in c.agreement.outputs)
    return replace(c, agreement=replace(c.agreement, outputs=outputs))


def _compare(*args):
    result = runner.invoke(app, ["compare", *map(str, args), "--json"])
    return result.exit_code, json.loads(result.stdout)


SPEED = {"regression", "improvement", "unchanged", "not judged"}


def test_shards_from_different_machines_combine_and_name_how_they_differ(tmp_path):
    whole = results.load(PAIR / "b.json")
    (combined,) = shard.load_runs([_shards(tmp_path / "b", whole, elsewhere=True)])
    assert sorted(map(str, combined.done_keys())) == sorted(map(str, whole.done_keys()))
    mixed = shard.mixed_machines(combined)
    assert mixed is not None and mixed.fields == ("cpu", "cpu_vendor", "cpu_model_number")
    assert mixed.reason() == APART
    assert "`b-1`: cpu AMD EPYC" in mixed.each() and f"`b-2`: cpu {XEON}" in mixed.each()
    (same,) = shard.load_runs([_shards(tmp_path / "same", whole)])
    assert shard.mixed_machines(same) is None and shard.MIXED_MACHINES not in same.config


def test_compare_judges_no_speed_with_shards_from_different_machines_not_even_forced(tmp_path):
    base, whole = PAIR / "a.json", results.load(PAIR / "b.json")
    new = _shards(tmp_path / "b", whole, elsewhere=True)
    why = f"NEW's {APART}"
    for forced in ([], ["--force-speed"]):
        code, out = _compare(base, new, "--threshold", "1%", *forced)
        speed = [c["kind"] for c in out["changes"] if c["kind"] in SPEED]
        assert code == 0 and not out["speed_judged"] and out["refused"] == [why]
        assert speed and set(speed) == {"not judged"}
    assert out["notes"] == ["--force-speed ignored: a side's shards were measured on different machines"]
    text = runner.invoke(app, ["compare", str(base), str(new)]).stdout
    assert f"{why}: speed not judged (not even with --force-speed)" in text
    code, out = _compare(new, base)  # the shards as the base
    assert out["refused"] == [why.replace("NEW", "BASE")] and not out["speed_judged"]
    # Agreement is still judged: a case that fails in the Xeon's shard fails the gate.
    key = "multitask-n3@tiny/kept/ort:cpu/fp32/b1"
    code, out = _compare(base, _shards(tmp_path / "bad", whole, elsewhere=True, failing=key), "--force-speed")
    assert code == 1 and {c["key"]: c["kind"] for c in out["changes"]}[key] == "new failure"


def test_shards_from_one_machine_compare_with_speed_judged(tmp_path):
    new = _shards(tmp_path / "b", results.load(PAIR / "b.json"))
    code, out = _compare(PAIR / "a.json", new, "--threshold", "50%")
    speed = [c["kind"] for c in out["changes"] if c["kind"] in SPEED]
    assert code == 0 and out["speed_judged"] and out["refused"] == [] and out["unlike"] == []
    assert speed and "not judged" not in speed


def test_report_names_each_shards_machine(tmp_path):
    parts = _shards(tmp_path / "b", results.load(PAIR / "b.json"), elsewhere=True)
    result = runner.invoke(app, ["report", str(parts), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "rep" / "report.md").read_text()
    note = next(line for line in text.splitlines() if "differ in" in line)
    assert APART in note
    assert "`b-1`: cpu AMD EPYC" in note and f"`b-2`: cpu {XEON}" in note
