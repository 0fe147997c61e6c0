"""The README's `ccnbench` commands run as written (in a scratch copy of results/ and artifacts)."""

import re
import shlex
import shutil

import pytest
from typer.testing import CliRunner

from ccnbench.cli import app

from helpers import ROOT

# Commands the unit tests do not run, and why. Everything else in the README runs here.
NOT_RUN = {
    "--config cpu-default": "the full default sweep takes minutes; CI's gate runs ci-quick",
    "--config cpu-baseline": "the baseline sweep takes minutes (ten .pt2 builds)",
    "--resume results/2026": "a placeholder run directory",
    "mypackage": "a placeholder for the reader's own package",
    "my_model.onnx": "a placeholder for the reader's own file",
    "<new-run>": "a placeholder",
    "new-benchmarks.json": "a placeholder",
    "tensorrt:cuda": "needs CUDA to mean anything",
    "library_models.py:two_resnet10_trunks": "two ResNet-10 trunks through torch.compile take minutes; "
    "tests/models/test_graph_merge.py covers the pass, tests/run/test_check.py the --layout merged route",
    "my_ckpt.pt": "a placeholder for the reader's checkpoint: tests/training/test_checkpoint.py runs the route",
    "my_merged.pt": "a placeholder for the reader's merged weights: tests/training/test_checkpoint.py runs it",
    "train-bench --preset small": "minutes of cold torch.compile: tests/training/test_bench.py runs it at tiny",
    "--variant all --layout all --targets": "every variant, small preset, compile included: "
    "tests/run/test_check.py runs it at tiny",
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("ccnbench "):
                commands.append(line)
    return commands


def test_readme_has_commands_for_every_cli_command():
    names = {c.split()[1] for c in readme_commands()}
    assert names >= {"variants", "export", "check", "bench", "report", "compare", "recommend"}


@pytest.mark.slow
@pytest.mark.usefixtures("quick_is_one_process")  # runs as written; test_sweep times real contests
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, tmp_path, monkeypatch):
    skip = next((why for pattern, why in NOT_RUN.items() if pattern in command), None)
    if skip:
        pytest.skip(skip)
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("logs"))
    shutil.copytree(ROOT / "tests" / "fixtures", tmp_path / "tests" / "fixtures")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    # compare exits 1 when it finds a regression; comparing a run with itself must pass.
    assert result.exit_code == 0, f"{command}\n{result.output}"
