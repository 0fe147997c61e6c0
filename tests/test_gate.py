"""The CI regression gate end to end: a real 1.3× slow-down injected into one target is caught.

The slow-down is injected from outside the package: a sitecustomize module on PYTHONPATH makes
every ONNX Runtime call spin for another 30 % of its own duration, in the sweep's worker
processes too. The gate is the one `.ci/run` uses: per case, 15 %, outside both runs' noise.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SWEEPS = Path(__file__).parent.parent / "ccnbench" / "sweeps"

INJECTOR = """
import time
from ccnbench.backends import onnxruntime as _ort
_original = _ort.OrtRunner.infer
def _slower(self, inputs):
    start = time.perf_counter()
    outputs = _original(self, inputs)
    end = time.perf_counter() + 0.3 * (time.perf_counter() - start)
    while time.perf_counter() < end:  # busy, like the model: a sleep would free the core
        pass
    return outputs
_ort.OrtRunner.infer = _slower
"""


def _ci_sweep(tmp_path: Path) -> Path:
    """The CI's own sweep file (protocol, threads, processes), on two of its five variants."""
    text = (SWEEPS / "ci-quick.toml").read_text()
    assert 'variants = "all"' in text
    path = tmp_path / "ci-two-variants.toml"
    path.write_text(text.replace('variants = "all"', 'variants = ["model", "decision"]'))
    return path


def _bench(sweep: Path, out: Path, artifacts: Path, env_path: str | None = None) -> None:
    import os

    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = env_path + os.pathsep + env.get("PYTHONPATH", "")
    args = ["bench", "--config", str(sweep), "--out", str(out), "--artifacts", str(artifacts), "--no-report"]
    subprocess.run([sys.executable, "-m", "ccnbench", *args], check=True, env=env, capture_output=True)


@pytest.mark.slow
def test_gate_fails_on_an_injected_slowdown_of_thirty_percent(tmp_path, artifacts_dir):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECTOR)
    sweep = _ci_sweep(tmp_path)
    _bench(sweep, tmp_path / "base", artifacts_dir)
    _bench(sweep, tmp_path / "slow", artifacts_dir, env_path=str(tmp_path / "inject"))
    gate = [sys.executable, "-m", "ccnbench", "compare", str(tmp_path / "base"), str(tmp_path / "slow"),
            "--threshold", "15%", "--json"]  # fmt: skip
    result = subprocess.run(gate, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout
    report = json.loads(result.stdout)
    failures = [c for c in report["changes"] if c["kind"] == "regression"]
    assert failures and {c["target"] for c in failures} == {"ort:cpu"}
    assert all(c["slowdown"] > 0.15 for c in failures)
