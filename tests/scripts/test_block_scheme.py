"""scripts/block_scheme.py measures one model's kept/merged ratio four ways in one process."""

import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_the_script_prints_a_ratio_for_every_scheme():
    """Run as a user would (about 40 s): it calls the timing protocol's block directly, so a change
    to what a block returns breaks it here."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "block_scheme.py"), "ort:cpu", "1"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    reps = [line for line in done.stdout.splitlines() if line.startswith("rep ")]
    assert reps
    for line in reps:
        ratios = dict(re.findall(r"(block50ms|block10ms|per-iteration|sequential) ([0-9.]+)", line))
        assert set(ratios) == {"block50ms", "block10ms", "per-iteration", "sequential"}
        assert all(float(r) > 0 for r in ratios.values())
