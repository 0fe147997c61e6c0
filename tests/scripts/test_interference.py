"""scripts/interference.py judges a member timed after another runtime against the same member alone."""

import importlib.util
import os
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "interference.py"


def _script():
    spec = importlib.util.spec_from_file_location("interference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(*pairs):
    return [{"target": t, "after": a, "median": m, "settle_ms": 1.0} for t, a, m in pairs]


def test_a_member_slowed_by_its_predecessor_is_flagged_and_an_undisturbed_one_agrees():
    script = _script()
    alone = {
        "ort:cpu": [_blocks(("ort:cpu", "ort:cpu", m)) for m in (1.0, 1.02, 0.98, 1.01, 0.99)],
        "torch:cpu": [_blocks(("torch:cpu", "torch:cpu", m)) for m in (2.0, 2.04, 1.96, 2.02, 1.98)],
    }
    together = [
        _blocks(("torch:cpu", "ort:cpu", 2.6 + i / 100), ("ort:cpu", "torch:cpu", 1.0 + i / 200))
        for i in range(5)
    ]
    rows = script._judge(["torch:cpu", "ort:cpu"], {"all": together, **alone})
    by = {(r["target"], r["after"]): r for r in rows}
    assert by["torch:cpu", "ort:cpu"]["agrees"] is False and by["torch:cpu", "ort:cpu"]["ratio"] > 1.25
    assert by["ort:cpu", "torch:cpu"]["agrees"] is True
    assert (
        by["ort:cpu", "torch:cpu"]["alone_processes"]
        == by["ort:cpu", "torch:cpu"]["interleaved_processes"]
        == 5
    )
    assert "| torch:cpu | ort:cpu |" in script._markdown("setup", rows)


@pytest.mark.slow
def test_the_script_runs_a_real_contest_both_ways():
    """Runs the script as a user would: it drives the contest's own loop, so a change to the
    contest's signatures breaks it here and not in a user's hands."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--targets", "torch:cpu,ort:cpu", "--preset", "tiny", "--variant", "model",
         "--layout", "kept", "--batch", "1", "--processes", "2", "--rounds", "2"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| torch:cpu | ort:cpu |" in done.stdout and "| ort:cpu | torch:cpu |" in done.stdout
