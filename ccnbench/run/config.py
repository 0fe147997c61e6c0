"""What a sweep runs, and the one route every way of saying it takes.

A sweep file, the ``bench`` flags and a stored run's configuration all become a ``SweepConfig``
through ``SweepConfig.from_dict``, which type-checks every value and names the field it rejects;
so do the ``check`` flags. What runs is planned from it by ``ccnbench.run.plan.expand``.
Defaults live here only: the command line's options default to "not given" and take their
values from ``DEFAULTS`` and ``MODEL_DEFAULTS``, so no second copy can drift.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ccnbench.backends.base import MEMORY_FORMATS
from ccnbench.errors import UsageError
from ccnbench.measure.agreement import Tolerance, TolerancePolicy
from ccnbench.measure.int8_grading import EVAL_SAMPLES
from ccnbench.measure.timing import DEFAULT, QUICK, Protocol
from ccnbench.run import selection
from ccnbench.shard import parse_shard

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEPS_DIR = Path(__file__).parent.parent / "sweeps"
#: The bundled sweeps' names, as ``--config`` takes them: read from the folder, so a list can't go stale.
BUNDLED_SWEEPS = tuple(sorted(p.stem for p in SWEEPS_DIR.glob("*.toml")))
DEFAULT_TIMEOUT = 600.0
ISOLATIONS = ("group", "model", "device")
PRECISIONS = ("fp32", "fp16", "bf16")

# What one [[models]] entry selects, with its defaults.
MODEL_DEFAULTS: dict[str, Any] = {
    "preset": "small",
    "variants": "all",
    "branches": None,
    "input_modes": "separate",
    "layouts": "all",
    "model": None,
    "input_shape": None,
    "onnx": None,
    "load_inputs": None,
    "load_outputs": None,
    "seed": None,  # None: the sweep's seed
    "merge": None,  # None: models.DEFAULT_MERGE (a user's module only)
}
_MODEL_KEYS = set(MODEL_DEFAULTS)

# Accepted types per key: (python types, words for the error). A comma string is a list.
_STR = ((str,), "a string")
_LIST = ((str, list), "a string or a list of strings")
_INTS = ((int, str, list), "an integer, a comma string or a list of integers")
_INT = ((int,), "an integer")
_NUMBER = ((int, float), "a number")
_BOOL = ((bool,), "true or false")
_TABLE = ((dict,), "a table")
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": _STR, "description": _STR, "targets": _LIST, "precisions": _LIST, "batches": _INTS,
    "quick": _BOOL, "timeout": _NUMBER, "transfers": _BOOL, "opset": _INT, "threads": _INT,
    "artifacts": _STR, "protocol": _TABLE, "tolerance": _TABLE, "isolation": _STR, "dynamic_batch": _BOOL,
    "memory_formats": _LIST, "eval_inputs": _STR,
    "seed": _INT, "shard": _STR, "models": ((list,), "a list of tables ([[models]])"),
    "preset": _STR, "variants": _LIST, "branches": _INTS, "input_modes": _LIST, "layouts": _LIST,
    "model": _STR, "input_shape": _STR, "onnx": _LIST, "load_inputs": _STR, "load_outputs": _STR,
    "merge": _STR,
}  # fmt: skip
_TOP_KEYS = set(_TYPES)


@dataclass(frozen=True)
class SweepConfig:
    """What to run. ``models`` are selections (preset, variants, branches, ...) each expanded on
    its own; everything else applies to all of them. ``shard`` = (K, N) runs the K-th of N parts."""

    name: str = "sweep"
    models: tuple[dict[str, Any], ...] = ({},)
    targets: tuple[str, ...] = ("torch:cpu", "ort:cpu")
    precisions: tuple[str, ...] = ("fp32",)
    batches: tuple[int, ...] = (1, 8)
    protocol: Protocol = DEFAULT
    timeout: float = DEFAULT_TIMEOUT
    transfers: bool = False
    opset: int = 18
    threads: int | None = None
    artifacts: str = "artifacts"
    atol: float | None = None
    rtol: float | None = None
    per_output: Mapping[str, Tolerance] = field(default_factory=dict)
    seed: int = 0
    isolation: str = "group"
    dynamic_batch: bool = False
    shard: tuple[int, int] | None = None
    # PyTorch targets run once per memory format listed (others have only their own layout).
    memory_formats: tuple[str, ...] = ("contiguous",)
    # int8 cases: graded on this .npz of inputs instead of the seeded evaluation set.
    eval_inputs: str | None = None

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise UsageError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}")
        if self.timeout <= 0:
            raise UsageError(f"timeout must be positive, got {self.timeout}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        if self.eval_inputs is not None and not Path(self.eval_inputs).is_file():
            raise UsageError(
                f"--eval-inputs {self.eval_inputs}: no such file (a .npz, one array per input name)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "isolation": self.isolation,
            "dynamic_batch": self.dynamic_batch,
            "memory_formats": list(self.memory_formats),
            **({"eval_inputs": self.eval_inputs} if self.eval_inputs else {}),
            "models": [dict(m) for m in self.models],
            "targets": list(self.targets),
            "precisions": list(self.precisions),
            "batches": list(self.batches),
            "protocol": self.protocol.to_dict(),
            "timeout": self.timeout,
            "transfers": self.transfers,
            "opset": self.opset,
            "threads": self.threads,
            "artifacts": self.artifacts,
            "tolerance": {
                "atol": self.atol,
                "rtol": self.rtol,
                "outputs": {k: [v.atol, v.rtol] for k, v in self.per_output.items()},
            },
            "seed": self.seed,
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sweep") -> SweepConfig:
        data = {k: v for k, v in data.items() if v is not None}  # TOML has no null; stored runs do
        _check_keys(data, _TOP_KEYS, source, "")
        models = data.get("models") or [{}]
        _check_types(data, source)
        for m in models:
            if not isinstance(m, dict):
                raise UsageError(f"{source}: 'models' must be a list of tables ([[models]])")
            m = {k: v for k, v in m.items() if v is not None}
            _check_keys(m, _MODEL_KEYS, source, " in [[models]]")
            _check_types(m, source)
            if ("load_inputs" in {**data, **m}) != ("load_outputs" in {**data, **m}):
                raise UsageError(
                    f"{source}: load_inputs and load_outputs go together (the outputs of those inputs)"
                )
        # The top-level seed is the sweep's own (models without one use it), not copied into each.
        defaults = {k: data[k] for k in _MODEL_KEYS - {"seed"} if k in data}
        tolerance = data.get("tolerance") or {}
        _check_keys(tolerance, {"atol", "rtol", "outputs"}, source, " in [tolerance]")
        try:
            return cls(
                name=data.get("name", cls.name),
                models=tuple({**defaults, **{k: v for k, v in m.items() if v is not None}} for m in models),
                targets=tuple(as_list(data.get("targets", list(cls.targets)))),
                precisions=selection.precisions(as_list(data.get("precisions", list(cls.precisions))), PRECISIONS),
                batches=selection.integers(as_list(data.get("batches", list(cls.batches))), "batch sizes"),
                protocol=_protocol(data.get("protocol") or {}, bool(data.get("quick", False)), source),
                timeout=float(data.get("timeout", DEFAULT_TIMEOUT)),
                transfers=data.get("transfers", False),
                opset=data.get("opset", 18),
                threads=data.get("threads"),
                artifacts=data.get("artifacts", "artifacts"),
                atol=_number(tolerance, "atol", source),
                rtol=_number(tolerance, "rtol", source),
                per_output=_per_output(tolerance.get("outputs") or {}, source),
                seed=data.get("seed", 0),
                isolation=data.get("isolation", "group"),
                dynamic_batch=data.get("dynamic_batch", False),
                memory_formats=selection.choices(as_list(data.get("memory_formats", list(cls.memory_formats))), MEMORY_FORMATS, "memory format"),
                shard=parse_shard(data["shard"]) if "shard" in data else None,
                eval_inputs=str(data["eval_inputs"]) if data.get("eval_inputs") else None,
            )  # fmt: skip
        except UsageError as exc:
            text = str(exc)
            raise UsageError(text if text.startswith(source) else f"{source}: {text}") from None


DEFAULTS = SweepConfig()


def load_config(name_or_path: str) -> SweepConfig:
    """A sweep file by path, or by name from ccnbench's bundled sweeps (``cpu-default``)."""
    return SweepConfig.from_dict(read_sweep_file(name_or_path), source=str(sweep_file(name_or_path)))


def sweep_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = SWEEPS_DIR / f"{name_or_path}.toml"
    if not bundled.is_file():
        names = ", ".join(BUNDLED_SWEEPS)
        raise UsageError(f"no sweep file {name_or_path!r} (bundled sweeps: {names})")
    return bundled


def read_sweep_file(name_or_path: str) -> dict[str, Any]:
    path = sweep_file(name_or_path)
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from exc


# --- the command line -------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A command-line option that sets a configuration key (``a.b``: key ``b`` of table ``a``)."""

    key: str
    help: str
    short: str | None = None


# The options ``bench`` and ``check`` share with sweep files: the command line's declarations,
# help included, are made from this table, so a flag and its key are written once.
FLAGS: dict[str, Flag] = {
    "--variant": Flag("variants", "early, feature, model, decision, multitask, a comma list, or all.", "-v"),
    "--layout": Flag("layouts", "kept (one op per branch), merged (one op per layer) or all.", "-l"),
    "--branches": Flag("branches", "Branch count N, or a comma list (default: the preset's).", "-n"),
    "--preset": Flag("preset", "Size preset: tiny, small, medium.", "-p"),
    "--input-mode": Flag("input_modes", "separate (one input per branch), shared (one input for all), or all."),
    "--targets": Flag("targets", "backend:device list, e.g. torch:cpu,ort:cpu,compile:cpu,ort:cuda,tensorrt:cuda; "
                      "or all, cpu, cuda.", "-t"),
    "--precision": Flag("precisions", "fp32, fp16, bf16 (torch targets), int8 (int8-u8 and int8-s8 QDQ files: ort:cpu, openvino:cpu), a comma list."),
    "--batch": Flag("batches", "Batch sizes, a comma list.", "-b"),
    "--atol": Flag("tolerance.atol", "Absolute tolerance (default: per precision)."),
    "--rtol": Flag("tolerance.rtol", "Relative tolerance (default: per precision)."),
    "--tol": Flag("tolerance.outputs", "Per-output override name=atol[,rtol], e.g. regression=1e-3,1e-3."),
    "--onnx": Flag("onnx", "Your own ONNX file (repeatable) instead of ccnbench's variants."),
    "--model": Flag("model", "Your own nn.Module factory: package.module:function or file.py:function."),
    "--input-shape": Flag("input_shape", "With --model: one input's shape without batch, e.g. 1x24x24x24."),
    "--merge": Flag("merge", "With --model, the merged layout: partial (default: also what is the same in branches "
                    "that differ) or whole (only identical branches)."),
    "--load-inputs": Flag("load_inputs", "With --onnx: saved reference inputs (Polygraphy JSON or .npz)."),
    "--load-outputs": Flag("load_outputs", "With --onnx: saved reference outputs (Polygraphy JSON or .npz)."),
    "--quick": Flag("quick", "Short warm-up and measurement (CI, smoke runs)."),
    "--transfers": Flag("transfers", "CUDA: also time host<->device copies."),
    "--timeout": Flag("timeout", f"Seconds a worker may take for one case group (default {DEFAULT_TIMEOUT:g})."),
    "--name": Flag("name", "Run name, used in the default run directory (default bench)."),
    "--shard": Flag("shard", "K/N: run the K-th of N parts of the sweep (one per CI runner or machine)."),
    "--opset": Flag("opset", "ONNX opset (default 18: read by ONNX Runtime and TensorRT 10/11)."),
    "--seed": Flag("seed", "Seed of the weights and inputs."),
    "--threads": Flag("threads", "CPU threads for every target (default: physical cores)."),
    "--artifacts": Flag("artifacts", "Where ONNX files, engines and caches go."),
    "--isolation": Flag("isolation", "group: a fresh worker per case group; model: one per model (faster); "
                        "device: one per device for the whole sweep (fewest CUDA start-ups); default group."),
    "--eval-inputs": Flag("eval_inputs", "int8: grade on these inputs (.npz, one array per input name) instead of "
                          f"{EVAL_SAMPLES} seeded samples; agreement with the float model, not task accuracy."),
    "--dynamic-batch": Flag("dynamic_batch", "torch.compile one graph for all batch sizes (less compile time)."),
    "--memory-format": Flag("memory_formats", "PyTorch targets: weights in contiguous and/or channels_last_3d "
                            "(cuDNN for every conv on CUDA); comma list, default contiguous."),
}  # fmt: skip
FLAG_KEYS = {name: flag.key for name, flag in FLAGS.items()}
# What a sweep file leaves to the command line: where things go, its name, the quick protocol
# (a smoke run of a big sweep) and which part of it this machine runs.
_FILE_OVERRIDES = {"--quick", "--artifacts", "--name", "--shard"}


def from_command_line(flags: Mapping[str, Any], config_file: str | None) -> SweepConfig:
    """The sweep that ``bench`` or ``check`` flags (flag -> value, None when not given) describe.

    With a sweep file, the file decides: a flag that would change what it runs is a usage error
    naming the flag, never silently ignored.
    """
    given = _given(flags)
    unknown = sorted(set(given) - set(FLAG_KEYS))
    if unknown:
        raise ValueError(f"no configuration key for {unknown[0]}")  # a programming error
    if config_file is None:
        data: dict[str, Any] = {"name": "bench"}
        for flag, value in given.items():
            table, _, key = FLAG_KEYS[flag].rpartition(".")
            (data.setdefault(table, {}) if table else data)[key] = _flag_value(flag, value)
        return SweepConfig.from_dict(data, source="command line")
    refused = [f for f in given if f not in _FILE_OVERRIDES]
    if refused:
        raise UsageError(f"{', '.join(refused)} cannot be combined with --config: the sweep file decides")
    data = read_sweep_file(config_file)
    for flag, value in given.items():
        if flag == "--quick":  # the quick protocol replaces the file's timing, as on the command line
            data = {**data, "quick": bool(value), "protocol": {}}
        else:
            data = {**data, FLAG_KEYS[flag]: _flag_value(flag, value)}
    return SweepConfig.from_dict(data, source=str(sweep_file(config_file)))


def check_resume(flags: Mapping[str, Any], config_file: str | None, out: Path | None) -> None:
    """``--resume`` reruns the stored sweep in its own directory: every other flag is refused."""
    refused = list(_given(flags)) + (["--config"] if config_file else []) + (["--out"] if out else [])
    if refused:
        raise UsageError(
            f"{', '.join(refused)} cannot be combined with --resume: the stored run decides what runs and where"
        )


def _given(flags: Mapping[str, Any]) -> dict[str, Any]:
    # None is "not given"; so is False for an on-only switch (--quick) and [] for a repeatable one.
    return {f: v for f, v in flags.items() if v is not None and v is not False and v != []}


def _flag_value(flag: str, value: Any) -> Any:
    if flag == "--tol":  # name=atol[,rtol] items: the [tolerance.outputs] table
        return {k: [v.atol, v.rtol] for k, v in TolerancePolicy.parse_overrides(value).items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    return value


def _check_keys(data: Mapping[str, Any], known: set[str], source: str, where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(
            f"{source}: unknown key {unknown[0]!r}{where}; known keys: {', '.join(sorted(known))}"
        )


def _check_types(data: Mapping[str, Any], source: str) -> None:
    for key, value in data.items():
        types, words = _TYPES[key]
        # True is an int to Python, not to a sweep file.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise UsageError(f"{source}: {key!r} must be {words}, got {value!r}")


def _protocol(table: Mapping[str, Any], quick: bool, source: str) -> Protocol:
    """The timing protocol from QUICK or DEFAULT plus the [protocol] table, checked against the
    Protocol dataclass itself: a field added there needs no change here."""
    base = QUICK if quick else DEFAULT
    known = {f.name for f in fields(Protocol)}
    _check_keys(table, known, source, " in [protocol]")
    for key, value in table.items():
        default = getattr(base, key)
        expected = float if isinstance(default, float) else type(default)
        ok = isinstance(value, (int, float)) if expected is float else isinstance(value, expected)
        if not ok or (isinstance(value, bool) and expected is not bool):
            raise UsageError(f"{source}: [protocol] {key!r} must be {expected.__name__}, got {value!r}")
    return replace(
        base, **{k: float(v) if isinstance(getattr(base, k), float) else v for k, v in table.items()}
    )


def _number(table: Mapping[str, Any], key: str, source: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{source}: [tolerance] {key!r} must be a number, got {value!r}")
    return float(value)


def _per_output(outputs: Mapping[str, Any], source: str) -> dict[str, Tolerance]:
    result = {}
    for name, value in outputs.items():
        pair = value if isinstance(value, list) else [value]
        if not 1 <= len(pair) <= 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in pair
        ):
            raise UsageError(f"{source}: [tolerance.outputs] {name!r} must be [atol, rtol], got {value!r}")
        result[name] = Tolerance(float(pair[0]), float(pair[1]) if len(pair) > 1 else 0.0)
    return result


def as_list(value: Any) -> list[Any]:
    """A comma string, one integer or a sequence as a list (how sweep files and flags give lists)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        return [value]
    return list(value)
