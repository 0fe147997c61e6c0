"""The CI regression gate end to end: a real 2× slow-down injected into one target is caught.

The slow-down is injected from outside the package: a sitecustomize module on PYTHONPATH makes
every ONNX Runtime call run the session twice, in the sweep's worker processes too.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

INJECTOR = """
from ccnbench.backends import onnxruntime as _ort
_original = _ort.OrtRunner.infer
def _twice(self, inputs):
    _original(self, inputs)
    return _original(self, inputs)
_ort.OrtRunner.infer = _twice
"""


def _bench(out: Path, artifacts: Path, env_path: str | None = None) -> None:
    import os

    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = env_path + os.pathsep + env.get("PYTHONPATH", "")
    args = ["bench", "--preset", "tiny", "--variant", "model,decision", "--layout", "all", "--targets",
            "torch:cpu,ort:cpu", "--batch", "1,8", "--quick", "--out", str(out), "--artifacts", str(artifacts),
            "--no-report"]  # fmt: skip
    subprocess.run([sys.executable, "-m", "ccnbench", *args], check=True, env=env, capture_output=True)


@pytest.mark.slow
def test_gate_fails_on_an_injected_twofold_slowdown(tmp_path, artifacts_dir):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECTOR)
    _bench(tmp_path / "base", artifacts_dir)
    _bench(tmp_path / "slow", artifacts_dir, env_path=str(tmp_path / "inject"))
    gate = [sys.executable, "-m", "ccnbench", "compare", str(tmp_path / "base"), str(tmp_path / "slow"),
            "--by", "target", "--threshold", "50%", "--json"]  # fmt: skip
    result = subprocess.run(gate, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout
    report = json.loads(result.stdout)
    failures = [c for c in report["changes"] if c["kind"] == "regression"]
    assert [c["key"] for c in failures] == ["ort:cpu (all cases)"]
    assert failures[0]["slowdown"] > 0.5  # about +100 %: twice the work
