"""AOTInductor packages: a model compiled ahead of time into one ``.pt2`` file.

``torch.export`` traces the module (batch dynamic), ``aoti_compile_and_package`` compiles it
with inductor into a shared library plus its weights, and ``aoti_load_package`` runs it with no
model code and no JIT. Building takes tens of seconds (a C++ compile), so a package is an
artifact like an ONNX file: built once, cached under the artifacts directory, reused unless
forced. Its description lives in a JSON file beside it (``<name>.pt2.json``), readable without
loading the package; reuse checks the package's SHA-256 against it, so a damaged or
half-copied file is built again rather than run.

The compiled code is specific to the machine it was built for (CPU instruction set, GPU
architecture), so that is part of the cache key, like the model, layout, precision and versions.
"""

from __future__ import annotations

import inspect
import io
import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ccnbench import __version__, fileio
from ccnbench.errors import CcnbenchError, UsageError, one_line
from ccnbench.formats.file_names import file_name, identity_digest, weights_digest, writable_dir
from ccnbench.models.cast import CastIO
from ccnbench.models.torch_numerics import TORCH_DTYPES, configure_cuda_numerics

if TYPE_CHECKING:
    from ccnbench.source import ModelSource

DEVICES = ("cpu", "cuda")
PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}
# Example batch for tracing: 1 would be specialised into the graph as a constant.
_TRACE_BATCH = 2
_MAX_BATCH = 4096
SUFFIX = ".pt2"


class PackageError(CcnbenchError):
    """torch.export or AOTInductor failed on this model."""


@dataclass(frozen=True)
class Package:
    """One ``.pt2`` file and what it holds. Field names match the ONNX Artifact's where they mean
    the same thing (path, sha256, size_bytes, layout, precision), so results record both alike."""

    path: Path
    sha256: str
    size_bytes: int
    model: str
    layout: str
    precision: str
    device: str
    machine: str  # what the compiled code is specific to: CPU instruction set or GPU architecture
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    build_seconds: float
    torch_version: str
    reused: bool = False

    # The ONNX-only fields results read from any artifact (see failures.artifact_summary).
    opset = None
    conv_count = None

    @property
    def export_seconds(self) -> float:
        return self.build_seconds

    @property
    def metadata_path(self) -> Path:
        return metadata_path(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file": self.path.name,
            "format": "pt2",
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "model": self.model,
            "layout": self.layout,
            "precision": self.precision,
            "device": self.device,
            "machine": self.machine,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "input_shape": list(self.input_shape),
            "dynamic_batch": self.dynamic_batch,
            "build_seconds": round(self.build_seconds, 3),
            "torch": self.torch_version,
            "ccnbench": __version__,
            "reused": self.reused,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path, reused: bool = False) -> Package:
        return cls(
            path=path,
            sha256=data["sha256"],
            size_bytes=int(data["size_bytes"]),
            model=data["model"],
            layout=data["layout"],
            precision=data["precision"],
            device=data["device"],
            machine=data["machine"],
            input_names=tuple(data["input_names"]),
            output_names=tuple(data["output_names"]),
            input_shape=tuple(data["input_shape"]),
            dynamic_batch=bool(data["dynamic_batch"]),
            build_seconds=float(data["build_seconds"]),
            torch_version=data["torch"],
            reused=reused,
        )


# --- public API ---------------------------------------------------------------------------------


def machine_key(device: str) -> str:
    """What compiled code is tied to: the CPU vector ISA torch uses, or the GPU's compute capability."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"sm{major}{minor}"
    return f"{platform.machine()}-{torch.backends.cpu.get_cpu_capability().lower()}"


def package_name(source: ModelSource, device: str, precision: str) -> str:
    """File name that says what the package is, plus a hash of everything that changes its bytes."""
    identity = {
        "model": source.spec.to_dict() if source.spec is not None else _weights_identity(source),
        "layout": source.graph_layout,
        "precision": precision,
        "machine": machine_key(device),
        "torch": torch.__version__,
        "ccnbench": __version__,
    }
    stem = source.label if source.spec is not None else "user-" + _file_stem(source.label)
    return file_name([stem, source.graph_layout, precision, device], identity_digest(identity), SUFFIX)


def package(
    source: ModelSource,
    device: str = "cpu",
    precision: str = "fp32",
    out_dir: Path | str = Path("artifacts"),
    force: bool = False,
) -> Package:
    """The AOTInductor package of ``source`` for ``device`` at ``precision``: reused when an
    identical, intact one exists (unless ``force``), else built and written atomically."""
    _check_options(source, device, precision)
    path = writable_dir(Path(out_dir)) / package_name(source, device, precision)
    if not force:
        reused = load(path, reused=True, missing_ok=True)
        if reused is not None:
            return reused
    return _build(source, device, precision, path)


def load(path: Path | str, reused: bool = False, missing_ok: bool = False) -> Package | None:
    """Describe the package at ``path`` from its JSON; None (with ``missing_ok``) when either file
    is absent or the package does not match its description (a partial copy, an edit)."""
    path = Path(path)
    meta = metadata_path(path)
    try:
        data = json.loads(meta.read_text())
        described = Package.from_dict(data, path, reused)
        intact = path.stat().st_size == described.size_bytes and fileio.sha256(path) == described.sha256
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if missing_ok:
            return None
        raise CcnbenchError(f"{path} is not a ccnbench .pt2 package with its {meta.name}: {exc}") from exc
    if not intact:
        if missing_ok:
            return None
        raise CcnbenchError(f"{path} does not match its {meta.name} (damaged or replaced); build it again")
    return described


def metadata_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# --- internals ----------------------------------------------------------------------------------


def _build(source: ModelSource, device: str, precision: str, path: Path) -> Package:
    if device == "cuda":
        # Triton kernels take the TF32 choice at compile time: fp32 must mean fp32 in them too.
        configure_cuda_numerics(precision)
    start = time.perf_counter()
    dtype = TORCH_DTYPES[precision]
    module = source.module().to(device=device, dtype=dtype).eval()
    if dtype != torch.float32:
        module = CastIO(module, dtype)  # float32 I/O, as every other target
    example = tuple(x.to(device) for x in source.make_inputs(_TRACE_BATCH, seed=0))
    program = _export_program(module, example)
    metadata = {
        "ccnbench": __version__,
        "model": source.label,
        "layout": source.graph_layout,
        "precision": precision,
    }
    buffer = io.BytesIO()  # the packager insists on a name ending in .pt2 or a buffer; atomic write after
    try:
        with warnings.catch_warnings():
            # A deprecation inside torch.export's pytree code, nothing the user can act on.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=buffer,
                # Stored in the package itself, so a shipped file says what it is (get_metadata()).
                inductor_configs={"aot_inductor.metadata": metadata},
            )
    except Exception as exc:
        raise PackageError(f"AOTInductor could not compile {source.label}: {one_line(exc)}") from exc
    fileio.write_bytes(path, buffer.getvalue())
    built = Package(
        path=path,
        sha256=fileio.sha256(path),
        size_bytes=path.stat().st_size,
        model=source.label,
        layout=source.graph_layout,
        precision=precision,
        device=device,
        machine=machine_key(device),
        input_names=source.input_names,
        output_names=source.output_names,
        input_shape=tuple(source.input_shape),
        dynamic_batch=True,
        build_seconds=round(time.perf_counter() - start, 3),
        torch_version=torch.__version__,
    )
    # Written after the package: a package without its JSON is never reused, so a crash between
    # the two writes costs a rebuild, not a wrong answer.
    fileio.write_text(built.metadata_path, json.dumps(built.to_dict(), indent=2, sort_keys=True) + "\n")
    return built


def _export_program(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Any:
    """torch.export with a dynamic batch (1..4096). There is no fixed-batch fallback: a package
    for the traced batch alone would fail every other case with a confusing shape error."""
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    per_input = tuple({0: batch} for _ in example)
    # forward(*inputs) is one variadic argument to torch.export: its shapes nest one level down.
    variadic = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())
    try:
        with torch.no_grad():
            program = torch.export.export(
                module, example, dynamic_shapes=(per_input,) if variadic else per_input
            )
    except Exception as exc:
        raise PackageError(f"torch.export failed (dynamic batch): {one_line(exc)}") from exc
    return program


def _check_options(source: ModelSource, device: str, precision: str) -> None:
    if device not in DEVICES:
        raise UsageError(f"a .pt2 package is built for cpu or cuda, not {device!r}")
    if precision not in PRECISIONS[device]:
        raise UsageError(
            f"no {precision} .pt2 package on {device}; choose from {', '.join(PRECISIONS[device])}"
        )
    if not source.has_module:
        raise UsageError(f"{source.label} is an ONNX file: a .pt2 package is built from a PyTorch model")


def _weights_identity(source: ModelSource) -> dict[str, Any]:
    """A user's model: its factory, shapes and weights (edited weights must never reuse a package)."""
    return {**source.to_dict(), "weights": weights_digest(source.module())}


def _file_stem(label: str) -> str:
    """``user:/path/to/nets.py:make`` or ``onnx:x.onnx`` -> ``nets-make``: no directories in a file name."""
    return Path(label.split(":", 1)[-1].replace(":", "-")).name.replace(".py", "")
