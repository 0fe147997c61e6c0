"""The environment fingerprint: what a result was measured on, so two runs can be compared.

Ratios between runtimes differ by CPU (ONNX Runtime over eager PyTorch on one tree: 0.37 on a
Xeon, 0.49 on an EPYC), so speed is only comparable between runs on the same machine with the
same software. The fingerprint therefore names the CPU precisely (vendor, model name, family /
model / stepping, the ISA flags the kernels dispatch on, cores) and the versions that run the
models; ``machine_id`` hashes the hardware part so per-machine baselines can be keyed by it, and
``differences`` says which fields two runs do not share.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ccnbench import __version__
from ccnbench.deps import optional


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str = ""
    memory_mib: int = 0
    sm_clock_mhz: str = ""
    memory_clock_mhz: str = ""
    max_sm_clock_mhz: str = ""
    capability: str = ""


@dataclass(frozen=True)
class Environment:
    """Versions, hardware and invocation of one run. Every field is plain JSON."""

    ccnbench: str
    git_commit: str
    command: str
    python: str
    platform: str
    cpu: str
    cpu_cores_logical: int
    cpu_cores_physical: int
    threads: int
    torch: str
    torch_cuda: str
    onnx: str
    onnxscript: str
    onnxruntime: str
    onnxruntime_providers: list[str] = field(default_factory=list)
    tensorrt: str = ""
    gpus: list[GpuInfo] = field(default_factory=list)
    timer_overhead_ns: float | None = None  # the CPU loop around a call that does nothing
    timer_overhead_cuda_ns: float | None = None  # the same with CUDA events on a stream
    # The machine, precisely (empty in runs recorded before these fields: an unknown machine).
    openvino: str = ""
    cpu_vendor: str = ""
    cpu_family: str = ""
    cpu_model_number: str = ""
    cpu_stepping: str = ""
    cpu_flags: list[str] = field(default_factory=list)  # the ISA_FLAGS this CPU has
    machine_id: str = ""  # hash of the hardware fields (``machine_id``)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Environment:
        data = dict(data)
        data["gpus"] = [GpuInfo(**g) for g in data.get("gpus", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        gpu = self.gpus[0].name if self.gpus else "no GPU"
        return (
            f"{self.cpu} ({self.cpu_cores_physical} cores, {self.threads} threads), {gpu}, torch {self.torch}"
        )


# ISA extensions the CPU kernels of PyTorch, ONNX Runtime and OpenVINO dispatch on.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve",
)  # fmt: skip
# What a run's speed depends on besides the code: two runs compare like with like when these match.
MACHINE_FIELDS = (
    "cpu", "cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping", "cpu_flags",
    "cpu_cores_physical", "cpu_cores_logical", "gpus",
)  # fmt: skip
SOFTWARE_FIELDS = ("python", "torch", "onnxruntime", "openvino", "threads")


def machine_id(env: Environment) -> str:
    """A stable 12-hex id of the hardware fields (GPU by name and memory, not by its clocks now)."""
    hardware = {name: getattr(env, name) for name in MACHINE_FIELDS if name != "gpus"}
    hardware["gpus"] = [[g.name, g.memory_mib] for g in env.gpus]
    text = json.dumps(hardware, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def known_machine(env: Environment) -> bool:
    """The run recorded a precise fingerprint (runs from before it are an unknown machine)."""
    return bool(env.machine_id and env.cpu_vendor)


def differences(base: Environment, new: Environment) -> list[str]:
    """Why two runs' speeds are not comparable, one phrase per reason; [] means like with like.

    A run without the precise fingerprint is an unknown machine: that is a reason by itself, and
    only its software fields it did record are compared.
    """
    reasons = [
        f"{side} run: unknown machine (recorded before machine fingerprints)"
        for side, env in (("base", base), ("new", new))
        if not known_machine(env)
    ]
    for name in differing_fields(base, new):
        reasons.append(f"{name}: {field_text(base, name)} -> {field_text(new, name)}")
    return reasons


def differing_fields(base: Environment, new: Environment) -> list[str]:
    """The fingerprint fields (``MACHINE_FIELDS``, ``SOFTWARE_FIELDS``) two runs do not share, in
    that order: what :func:`differences` names. Where either run is an unknown machine, only the
    software fields both recorded."""
    unknown = not (known_machine(base) and known_machine(new))
    names = SOFTWARE_FIELDS if unknown else MACHINE_FIELDS + SOFTWARE_FIELDS
    found = []
    for name in names:
        a, b = _field(base, name), _field(new, name)
        if a != b and not (unknown and "" in (a, b)):
            found.append(name)
    return found


def field_text(env: Environment, name: str) -> str:
    """A fingerprint field's value as :func:`differences` shows it (GPUs by name)."""
    return _short(_field(env, name))


def _field(env: Environment, name: str) -> Any:
    value = getattr(env, name)
    return [g.name for g in value] if name == "gpus" else value


def benchmark_machine(data: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of a pytest-benchmark file's ``machine_info`` (py-cpuinfo) that
    :func:`differences` compares for a run; None without a CPU description."""
    info = data.get("machine_info") or {}
    cpu = info.get("cpu") or {}
    if not cpu.get("brand_raw"):
        return None
    flags = set(cpu.get("flags") or ())
    return {
        "cpu": cpu.get("brand_raw"),
        "cpu_vendor": cpu.get("vendor_id_raw"),
        "cpu_family": cpu.get("family"),
        "cpu_model_number": cpu.get("model"),
        "cpu_stepping": cpu.get("stepping"),
        "cpu_flags": [f for f in ISA_FLAGS if f in flags],
        "cpu_cores_logical": cpu.get("count"),
        "python": info.get("python_version"),
    }


def benchmark_differences(base: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """:func:`differences` for two pytest-benchmark files' machines (``benchmark_machine``)."""
    reasons = []
    for side, machine in (("base", base), ("new", new)):
        if not machine:
            reasons.append(f"{side} file: unknown machine (no CPU in its machine_info)")
    if not reasons and base and new:
        for name in base.keys() | new.keys():
            a, b = base.get(name), new.get(name)
            if a != b:
                reasons.append(f"{name}: {a} -> {b}")
    return sorted(reasons)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value) if value != "" else "?"


def default_threads() -> int:
    """Threads every CPU target gets: the physical cores (hyper-threads slow conv kernels down)."""
    override = os.environ.get("CCNBENCH_THREADS")
    if override:
        return max(1, int(override))
    return physical_cores()


def physical_cores() -> int:
    psutil = optional("psutil")
    cores = psutil.cpu_count(logical=False) if psutil else None
    return cores or os.cpu_count() or 1


def collect(
    threads: int | None = None,
    timer_overhead_ns: float | None = None,
    timer_overhead_cuda_ns: float | None = None,
) -> Environment:
    """Fingerprint this process's environment. Never raises: what cannot be read stays empty."""
    torch = optional("torch")
    onnx = optional("onnx")
    onnxscript = optional("onnxscript")
    ort = optional("onnxruntime")
    cpu = cpu_fingerprint()
    env = Environment(
        ccnbench=__version__,
        git_commit=_git_commit(),
        command=" ".join(["ccnbench", *sys.argv[1:]]) if sys.argv else "",
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=_cpu_model(),
        cpu_cores_logical=os.cpu_count() or 1,
        cpu_cores_physical=physical_cores(),
        threads=threads or default_threads(),
        torch=getattr(torch, "__version__", ""),
        torch_cuda=(getattr(torch.version, "cuda", None) or "") if torch else "",
        onnx=getattr(onnx, "__version__", ""),
        onnxscript=getattr(onnxscript, "__version__", ""),
        onnxruntime=getattr(ort, "__version__", ""),
        onnxruntime_providers=list(ort.get_available_providers()) if ort else [],
        tensorrt=tensorrt_version(),
        gpus=gpu_info(),
        timer_overhead_ns=timer_overhead_ns,
        timer_overhead_cuda_ns=timer_overhead_cuda_ns,
        openvino=openvino_version(),
        **cpu,
    )
    return replace(env, machine_id=machine_id(env))


def openvino_version() -> str:
    """OpenVINO's version without importing its runtime (that costs a second), or ''."""
    try:
        return version("openvino")
    except PackageNotFoundError:
        return ""


def cpu_fingerprint(cpuinfo: str | None = None) -> dict[str, Any]:
    """Vendor, family/model/stepping numbers and the ISA_FLAGS present, from /proc/cpuinfo
    (``cpuinfo`` is its text, for tests); empty fields where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor describes them all
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {
        "cpu_vendor": fields.get("vendor_id") or fields.get("CPU implementer", "") or platform.machine(),
        "cpu_family": fields.get("cpu family") or fields.get("CPU architecture", ""),
        "cpu_model_number": fields.get("model") or fields.get("CPU part", ""),
        "cpu_stepping": fields.get("stepping") or fields.get("CPU variant", ""),
        "cpu_flags": [f for f in ISA_FLAGS if f in flags],
    }


def tensorrt_version() -> str:
    """TensorRT's version, or 'unavailable: <reason>'."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a broken install missing its CUDA libraries
        return f"unavailable: {type(exc).__name__}: {exc}"
    return str(getattr(tensorrt, "__version__", "unknown"))


def gpu_info() -> list[GpuInfo]:
    """GPU name, driver and clocks from nvidia-smi (NVML's view), or [] without a GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    query = "name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,compute_cap"
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 7:
            continue
        memory = int(float(parts[2])) if parts[2].replace(".", "").isdigit() else 0
        gpus.append(GpuInfo(parts[0], parts[1], memory, parts[3], parts[4], parts[5], parts[6]))
    return gpus


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The commit to record when the project is not its own git work tree (a copy sent to another
#: machine, or unpacked inside someone else's repository): the caller names it.
GIT_COMMIT_VARIABLE = "CCNBENCH_GIT_COMMIT"


def _git_commit(root: Path | None = None) -> str:
    """The project's own commit (``-dirty`` with uncommitted changes) when ``root`` (the project
    directory) is the top of its own git work tree; else ``$CCNBENCH_GIT_COMMIT``; else "unknown".

    A copy of the project inside another repository must not report that repository's commit,
    so ``git rev-parse --show-toplevel`` has to be the project root itself.
    """
    root = (root or Path(__file__).resolve().parent.parent).resolve()
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == root:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        if commit:
            dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
            return commit + ("-dirty" if dirty else "")
    return os.environ.get(GIT_COMMIT_VARIABLE, "").strip() or "unknown"


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` stdout, stripped; None when git is missing or fails."""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def describe(env: Environment | None = None) -> dict[str, Any]:
    """Rows for `ccnbench env`: the fingerprint plus what each target needs, in words."""
    env = env or collect()
    torch = optional("torch")
    cuda = "not available"
    if torch is not None and torch.cuda.is_available():
        cuda = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    rows: dict[str, Any] = {
        "ccnbench": env.ccnbench,
        "git commit": env.git_commit or "unknown",
        "python": env.python,
        "platform": env.platform,
        "cpu": env.cpu,
        "cpu id": f"{env.cpu_vendor} family {env.cpu_family} model {env.cpu_model_number} "
        f"stepping {env.cpu_stepping}",
        "cpu flags": " ".join(env.cpu_flags) or "-",
        "machine id": env.machine_id or "(unknown)",
        "cpu cores (physical/logical)": f"{env.cpu_cores_physical}/{env.cpu_cores_logical}",
        "threads per CPU target": env.threads,
        "torch": env.torch + (f" (CUDA {env.torch_cuda})" if env.torch_cuda else " (CPU build)"),
        "CUDA devices": cuda,
        "onnx": env.onnx or "not installed",
        "onnxscript": env.onnxscript or "not installed",
        "onnxruntime": env.onnxruntime or "not installed",
        "onnxruntime providers": ", ".join(env.onnxruntime_providers) or "-",
        "openvino": env.openvino or "not installed",
        "tensorrt": env.tensorrt,
    }
    for i, gpu in enumerate(env.gpus):
        rows[f"gpu {i}"] = (
            f"{gpu.name}, driver {gpu.driver}, {gpu.memory_mib} MiB, "
            f"SM {gpu.sm_clock_mhz}/{gpu.max_sm_clock_mhz} MHz, memory {gpu.memory_clock_mhz} MHz"
        )
    return rows
