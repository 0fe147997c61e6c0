"""examples/ci/github-actions.yml: it parses, its `ccnbench` commands are ones the CLI accepts, and
it gates with a base measured on the same runner as the head, not a baseline from elsewhere."""

import re
import shlex

import pytest
import typer
import yaml

from ccnbench.cli import app

try:  # typer >= 0.24 vendors click (as ccnbench.cli imports it)
    from typer._click.core import Context
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click import Context
    from click.exceptions import UsageError

from helpers import ROOT

WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def run_lines() -> list[tuple[str, str]]:
    """(job, line) for every line of every `run:` step, GitHub expressions replaced by a value of
    the kind they stand for (a shard number)."""
    lines = []
    for name, job in workflow()["jobs"].items():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                lines.append((name, re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", "1", line.strip())))
    return lines


def ccnbench_commands() -> list[str]:
    return [line for _, line in run_lines() if line.startswith("ccnbench ")]


def test_the_workflow_has_the_three_jobs_and_a_shard_matrix():
    jobs = workflow()["jobs"]
    assert set(jobs) == {"bench", "report", "gate"}
    shards = jobs["bench"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1))
    sharded = [c for c in ccnbench_commands() if "--shard" in c]
    assert sharded and all(f"/{len(shards)}" in c for c in sharded), "--shard K/N must match the matrix"
    assert jobs["report"]["needs"] == "bench"


def test_the_gate_measures_its_base_on_its_own_runner():
    """The gate job runs scripts/ci_gate.py (base and head on one machine, in one job) with the
    parent commit checked out; no step compares against a committed baseline from elsewhere."""
    gate = workflow()["jobs"]["gate"]
    assert any("python scripts/ci_gate.py" in s.get("run", "") for s in gate["steps"])
    checkout = next(s for s in gate["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] >= 2
    assert (ROOT / "scripts" / "ci_gate.py").is_file()
    assert not [c for c in ccnbench_commands() if c.startswith("ccnbench compare") and "results/" in c]


@pytest.mark.parametrize("command", ccnbench_commands())
def test_every_ccnbench_command_is_accepted(command):
    """Parsed by the CLI's own parser (options, their values' types, arguments), not run."""
    group = typer.main.get_command(app)
    name, *args = shlex.split(command)[1:]
    with Context(group) as context:
        sub = group.get_command(context, name)
        assert sub is not None, f"no command {name!r}"
        try:
            sub.make_context(name, args, parent=context)
        except UsageError as error:  # also BadParameter, NoSuchOption
            pytest.fail(f"{command}: {error.format_message()}")
