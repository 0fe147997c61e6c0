"""Int8 QDQ ONNX files, made from the fp32 export by ONNX Runtime's static quantization.

Two precisions, one per activation type: ``int8-u8`` (u8 asymmetric activations, ONNX Runtime's
classic CPU choice) and ``int8-s8`` (s8 symmetric, zero point 0: the form TensorRT takes, so the
same file can serve it). Weights are s8 symmetric per output channel in both; the method is
min-max calibration. A ``Recipe`` is everything that decides the file's bytes beyond the fp32
model: the quantizer and its version, method, activation type and symmetry, the number of
calibration samples and where they came from (a seed, or the SHA-256 of the user's ``.npz``).
It goes into the file's name hash and, as ``Recipe.key``, into the case's key, so two int8 files
made differently never match each other in ``compare`` or ``recommend``.

Seeded calibration inputs come from their own random stream, never the evaluation inputs'
(``CALIBRATION_STREAM``; the grading set is ``ccnbench.measure.int8_grading``'s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ccnbench import fileio
from ccnbench.errors import CcnbenchError, UsageError
from ccnbench.formats.file_names import identity_digest
from ccnbench.formats.onnx_artifact import META_PREFIX

if TYPE_CHECKING:
    from ccnbench.formats.onnx_artifact import Artifact
    from ccnbench.models import ModelSpec

INT8_PRECISIONS = ("int8-u8", "int8-s8")
# What ``--precision int8`` stands for: both activation types, each measured.
INT8_ALIAS = "int8"
ACTIVATIONS = {"int8-u8": "u8", "int8-s8": "s8"}
DEFAULT_SAMPLES = 32
METHOD = "minmax"
# Seeded calibration draws from this stream, far from make_inputs' (seed * 7919 + batch) and from
# the evaluation set's: calibration never sees the inputs it is graded on.
CALIBRATION_STREAM = 1_000_003
# Left in float: ONNX Runtime's quantizer turns decision fusion's weighted average (a MatMul of the
# stacked member logits by a 1-D weight vector) into noise (relative RMS error 0.74 against the
# oracle, top-1 agreement 3 %; 0.063 with the MatMul left alone: docs/evidence/int8.md).
NOT_QUANTIZED = ("MatMul",)
# Ops whose QDQ form ONNX Runtime's optimizer fuses into an integer kernel (QLinear*, *Integer).
ORT_INT8_PREFIXES = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")


def is_int8(precision: str) -> bool:
    return precision in INT8_PRECISIONS


def expand_alias(precisions: Sequence[str]) -> list[str]:
    """``int8`` -> both int8 precisions; every other name as given, order kept, once each."""
    out: list[str] = []
    for p in precisions:
        for name in INT8_PRECISIONS if p == INT8_ALIAS else (p,):
            if name not in out:
                out.append(name)
    return out


@dataclass(frozen=True)
class Recipe:
    """How an int8 file is made from the fp32 one (everything but the model)."""

    precision: str
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    data_sha256: str | None = None  # the user's calibration file; None: seeded inputs
    per_channel: bool = True  # False only for the per-tensor fault (ccnbench.models.int8_faults)

    def __post_init__(self) -> None:
        if not is_int8(self.precision):
            raise UsageError(f"{self.precision!r} is not an int8 precision ({', '.join(INT8_PRECISIONS)})")

    @property
    def activations(self) -> str:
        return ACTIVATIONS[self.precision]

    @property
    def symmetric(self) -> bool:
        return self.activations == "s8"

    def identity(self) -> dict[str, Any]:
        return {
            "quantizer": f"onnxruntime.quantization {_ort_version()}",
            "format": "QDQ",
            "method": METHOD,
            "activations": self.activations,
            "activation_symmetric": self.symmetric,
            "weights": "s8 symmetric " + ("per-channel" if self.per_channel else "per-tensor"),
            "samples": self.samples,
            "not_quantized": list(NOT_QUANTIZED),
            "calibration": f"data {self.data_sha256[:12]}" if self.data_sha256 else f"seed {self.seed}",
        }

    @property
    def key(self) -> str:
        """What the case's key holds: ``ort1.32.0/minmax/s8sym/n32/seed0`` (or ``/data<hash>``)."""
        symmetry = "sym" if self.symmetric else "asym"
        data = f"data{self.data_sha256[:12]}" if self.data_sha256 else f"seed{self.seed}"
        weights = "" if self.per_channel else "/per-tensor"
        return f"ort{_ort_version()}/{METHOD}/{self.activations}{symmetry}/n{self.samples}/{data}{weights}"


def recipe_for(precision: str, calibration: Path | str | None = None, seed: int = 0) -> Recipe:
    """The recipe of a case or an export: from the user's ``.npz`` (hashed) or seeded inputs."""
    if calibration is None:
        return Recipe(precision, seed=seed)
    path = Path(calibration)
    if not path.is_file() or path.suffix != ".npz":
        raise UsageError(f"--calibration {path}: expected a .npz file (one array per input name)")
    with np.load(path, allow_pickle=False) as data:
        samples = {int(data[n].shape[0]) for n in data.files if data[n].ndim}
    if len(samples) != 1:
        raise UsageError(f"--calibration {path}: the arrays must share one batch size (dim 0)")
    return Recipe(precision, samples=samples.pop(), data_sha256=fileio.sha256(path))


def calibration_inputs(
    recipe: Recipe,
    input_names: Sequence[str],
    input_shape: Sequence[int],
    calibration: Path | str | None = None,
) -> list[dict[str, np.ndarray]]:
    """One feed per calibration sample: the user's arrays by input name, or seeded normal inputs."""
    if calibration is not None:
        from ccnbench.formats.saved_reference import _arrays, _by_name

        arrays = _by_name(_arrays(Path(calibration), "inputs"), tuple(input_names), str(calibration), "input")
        for name, a in zip(input_names, arrays):
            if tuple(a.shape[1:]) != tuple(input_shape):
                raise UsageError(
                    f"--calibration {calibration}: {name} has samples of shape {tuple(a.shape[1:])}, "
                    f"the model takes {tuple(input_shape)}"
                )
        return [
            {n: np.ascontiguousarray(a[i : i + 1], dtype=np.float32) for n, a in zip(input_names, arrays)}
            for i in range(recipe.samples)
        ]
    generator = torch.Generator().manual_seed(CALIBRATION_STREAM + recipe.seed)
    return [
        {n: torch.randn(1, *input_shape, generator=generator).numpy() for n in input_names}
        for _ in range(recipe.samples)
    ]


def int8_name(fp32_name: str, recipe: Recipe) -> str:
    """The int8 file's name from the fp32 file's: its precision part and a hash of both."""
    stem, _, _ = fp32_name.removesuffix(".onnx").rpartition("-")
    stem = stem.replace("-fp32-", f"-{recipe.precision}-", 1)
    return f"{stem}-{identity_digest({'fp32': fp32_name, 'int8': recipe.identity()})}.onnx"


def write_int8(
    fp32: Artifact,
    recipe: Recipe,
    feeds: Sequence[dict[str, np.ndarray]],
    spec: ModelSpec | None = None,
    force: bool = False,
    edit: Callable[[Any], None] | None = None,
    path: Path | None = None,
) -> Artifact:
    """The int8 QDQ file of ``fp32`` beside it (reused when it exists, unless ``force``): quantized,
    stamped with its recipe, validated (structure too when ``spec`` is known) and written
    atomically. It must hold QuantizeLinear and DequantizeLinear nodes."""
    from ccnbench.formats.onnx_artifact import ExportError, describe, load_artifact, op_histogram, validate

    path = path or fp32.path.with_name(int8_name(fp32.path.name, recipe))
    if path.exists() and not force:
        try:
            return load_artifact(path, reused=True)
        except CcnbenchError:
            pass  # damaged: made again over it
    start = time.perf_counter()
    proto = quantize(fp32.path, recipe, feeds, edit)
    kinds = op_histogram(proto)
    if not kinds.get("QuantizeLinear") or not kinds.get("DequantizeLinear"):
        raise ExportError(f"{path.name}: the quantizer left no QuantizeLinear/DequantizeLinear nodes")
    meta = {
        p.key.removeprefix(META_PREFIX): p.value
        for p in proto.metadata_props
        if p.key.startswith(META_PREFIX)
    }
    meta |= {
        "precision": recipe.precision,
        "io": "fp32",
        "quantization": json.dumps(recipe.identity(), sort_keys=True),
        "quantization_key": recipe.key,
        "fp32_source": fp32.path.name,
        "export_seconds": f"{fp32.export_seconds + time.perf_counter() - start:.3f}",
    }
    _stamp(proto, meta)
    validate(proto, spec=spec, layout=fp32.layout if spec else None, io="fp32")
    data = proto.SerializeToString()
    fileio.write_bytes(path, data)
    return describe(proto, path, hashlib.sha256(data).hexdigest(), len(data))


def _stamp(proto: Any, values: dict[str, str]) -> None:
    """``values`` as the file's ccnbench metadata, replacing the fp32 file's (onnx_export does the
    same for its files; not imported from there, which imports this module)."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value


def quantize(
    fp32_path: Path,
    recipe: Recipe,
    feeds: Sequence[dict[str, np.ndarray]],
    edit: Callable[[Any], None] | None = None,
) -> Any:
    """The QDQ model (an ``onnx.ModelProto``): ``fp32_path`` quantized by ONNX Runtime on ``feeds``.

    ``edit`` may change the quantized graph before it is returned (the int8 faults do).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    # The quantizer's own default set (every op it can quantize), less NOT_QUANTIZED.
    op_types = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(NOT_QUANTIZED))

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    activation = QuantType.QUInt8 if recipe.activations == "u8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="ccnbench-int8-") as tmp:
        target = Path(tmp) / "int8.onnx"
        try:
            with _quiet_quantizer():
                quantize_static(
                    str(fp32_path),
                    str(target),
                    _Feeds(),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    per_channel=recipe.per_channel,
                    activation_type=activation,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": recipe.symmetric, "WeightSymmetric": True},
                )
        except Exception as exc:
            raise CcnbenchError(f"ONNX Runtime could not quantize {fp32_path.name}: {exc}") from exc
        proto = onnx.load(str(target))
    if edit is not None:
        edit(proto)
    return proto


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs a pre-processing hint on the root logger at every call: the
    exporter's graph is already optimised and shape-inferred, so the hint is noise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def with_precision(recipe: Recipe, precision: str) -> Recipe:
    return replace(recipe, precision=precision)
