"""The sweep builds every target's file (ONNX, .pt2) once, in its own process, before any worker."""

from pathlib import Path

from ccnbench.backends import BuildOptions, Target
from ccnbench.backends.aoti import AotiBackend
from ccnbench.backends.base import Backend
from ccnbench.models import spec_from_preset
from ccnbench.run import prebuild
from ccnbench.run.plan import CaseGroup
from ccnbench.source import ModelSource


def test_each_file_is_built_once_per_model_layout_and_precision(monkeypatch, tmp_path):
    built = []

    def record(self, source, target, options):
        built.append((self.file_format, source.layout, options.precision, str(target)))

    monkeypatch.setattr(Backend, "artifact", record)
    monkeypatch.setattr(AotiBackend, "artifact", record)
    spec = spec_from_preset("tiny", "decision")
    targets = ["torch:cpu", "compile:cpu", "ort:cpu", "openvino:cpu", "aoti:cpu"]
    groups = [
        CaseGroup(
            ModelSource.from_spec(spec, layout),
            Target.parse(t),
            "fp32",
            (1, 8),
            BuildOptions(batch_sizes=(1, 8), artifacts_dir=Path(tmp_path)),
        )
        for layout in ("kept", "merged")
        for t in targets
    ]
    notes = []
    prebuild.export_artifacts(groups, notes.append)
    # ort and openvino share one ONNX file; eager and torch.compile need none.
    assert sorted(built) == [
        ("onnx", "kept", "fp32", "ort:cpu"),
        ("onnx", "merged", "fp32", "ort:cpu"),
        ("pt2", "kept", "fp32", "aoti:cpu"),
        ("pt2", "merged", "fp32", "aoti:cpu"),
    ]
    assert any(n.startswith("building pt2 for decision-n3@tiny") for n in notes)
