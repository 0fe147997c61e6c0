"""Parse the comma lists and 'all' that the CLI and sweep files accept into validated tuples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ccnbench.errors import UsageError
from ccnbench.models import DEFAULT_MERGE, LAYOUTS, VARIANTS, ModelSpec, spec_from_preset
from ccnbench.models.spec import INPUT_MODES, SHARED_INPUT_VARIANTS

if TYPE_CHECKING:
    from ccnbench.source import ModelSource


def choices(value: str | Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """'a,b' or ['a', 'b'] or 'all' -> a tuple of allowed values in the order given, no repeats."""
    items = _split(value)
    if items == ["all"]:
        return tuple(allowed)
    unknown = [i for i in items if i not in allowed]
    if unknown:
        raise UsageError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(allowed)} or all")
    if not items:
        raise UsageError(f"no {what} given")
    return tuple(dict.fromkeys(items))


def precisions(value: str | Sequence[str], floats: Sequence[str], what: str = "precision") -> tuple[str, ...]:
    """Like ``choices`` over ``floats`` plus the int8 precisions (``int8`` names both); ``all``
    stays the float precisions: an int8 file is a quantization the user asks for by name."""
    from ccnbench.formats.int8 import INT8_PRECISIONS, expand_alias

    items = _split(value)
    if items == ["all"]:
        return tuple(floats)
    return choices(expand_alias(items), (*floats, *INT8_PRECISIONS), what)


def integers(value: str | int | Sequence[int | str], what: str, minimum: int = 1) -> tuple[int, ...]:
    """'1,8,32' or [1, 8] -> (1, 8, 32), each >= ``minimum``."""
    items = _split(value)
    try:
        numbers = [int(i) for i in items]
    except ValueError as exc:
        raise UsageError(f"{what} must be integers, got {value!r}") from exc
    if not numbers:
        raise UsageError(f"no {what} given")
    bad = [n for n in numbers if n < minimum]
    if bad:
        raise UsageError(f"{what} must be >= {minimum}, got {bad[0]}")
    return tuple(dict.fromkeys(numbers))


def specs(
    preset: str,
    variants: str | Sequence[str] = "all",
    branches: str | int | Sequence[int | str] | None = None,
    input_modes: str | Sequence[str] = "separate",
    seed: int | None = None,
) -> list[ModelSpec]:
    """Every valid spec of variants × branch counts × input modes at a preset.

    A shared input mode is silently skipped for variants that have none when several are
    asked for ('all'), and is an error when it is the only mode and no variant can use it.
    """
    chosen_variants = choices(variants, VARIANTS, "variant")
    modes = choices(input_modes, INPUT_MODES, "input mode")
    counts: Iterable[int | None] = integers(branches, "branches") if branches is not None else (None,)
    result = []
    for variant in chosen_variants:
        for mode in modes:
            if mode == "shared" and variant not in SHARED_INPUT_VARIANTS and len(modes) > 1:
                continue
            for n in counts:
                result.append(spec_from_preset(preset, variant, branches=n, input_mode=mode, seed=seed))
    return result


def layouts(value: str | Sequence[str]) -> tuple[str, ...]:
    return choices(value, LAYOUTS, "layout")


def _split(value: str | int | Sequence[int | str]) -> list[str]:
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def input_shape(text: str | None) -> tuple[int, ...] | None:
    """'1x24x24x24' -> (1, 24, 24, 24): one input's shape without the batch dimension."""
    return _sizes(text, "--input-shape", "1x24x24x24 (no batch dimension)")


def volume(text: str | None) -> tuple[int, int, int] | None:
    """'20' or '20x24x24' -> (D, H, W): a built-in variant's input volume; None stays None."""
    sizes = _sizes(text, "--volume", "24 or 24x24x24")
    if sizes is not None and len(sizes) == 1:
        sizes = sizes * 3
    if sizes is not None and len(sizes) != 3:
        raise UsageError(f"--volume {text!r} must be one or three positive sizes (D, H, W)")
    return sizes  # type: ignore[return-value]


def _sizes(text: str | None, flag: str, example: str) -> tuple[int, ...] | None:
    """'AxBxC' (or 'A×B×C') -> positive integers; None stays None."""
    if text is None:
        return None
    try:
        sizes = tuple(int(d) for d in text.lower().replace("×", "x").split("x"))
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r} must look like {example}") from exc
    if not sizes or any(d < 1 for d in sizes):
        raise UsageError(f"{flag} {text!r} must be positive sizes like {example}")
    return sizes


def sources(
    preset: str = "small",
    variants: str | Sequence[str] = "all",
    layouts_: str | Sequence[str] = "all",
    branches: str | int | Sequence[int | str] | None = None,
    input_modes: str | Sequence[str] = "separate",
    seed: int | None = None,
    model: str | None = None,
    shape: str | None = None,
    onnx: Sequence[str] | None = None,
    saved: tuple[str, str] | None = None,
    merge: str | None = None,
) -> list[ModelSource]:
    """What to run: ONNX files, a user's factory, or ccnbench's variants (in that priority).

    With ONNX files, ``model`` (the factory they were exported from) or ``saved`` (inputs and
    outputs files) is the reference they are checked against. ``merge`` (``--merge``) is what the
    graph pass may merge in a factory's merged layout; None is the default.
    """
    from ccnbench.source import ModelSource

    if merge is not None and (onnx or not model):
        raise UsageError("--merge says what the graph pass merges in your module; it goes with --model")
    if saved and not onnx:
        raise UsageError("--load-inputs/--load-outputs are the reference of an --onnx file; give --onnx")
    if onnx:
        if shape is not None:
            raise UsageError("--input-shape comes from the --onnx file itself; leave it out")
        return [ModelSource.from_onnx(path, model, saved) for path in onnx]
    if model:
        parsed = input_shape(shape)
        if parsed is None:
            raise UsageError("--model needs --input-shape (one input's shape without batch, e.g. 1x24x24x24)")
        counts = integers(branches, "branches") if branches is not None else (1,)
        # merged: the graph pass (ccnbench.models.graph_merge) folds the user's parallel branches;
        # what it cannot merge runs as written, with the reason in the results.
        chosen = layouts(layouts_)
        mode = merge or DEFAULT_MERGE
        return [ModelSource.from_factory(model, parsed, n, layout, mode) for n in counts for layout in chosen]
    if shape is not None:
        raise UsageError(
            "--input-shape goes with --model; ccnbench's variants take their shape from --preset"
        )
    return [
        ModelSource.from_spec(spec, layout)
        for spec in specs(preset, variants, branches, input_modes, seed)
        for layout in layouts(layouts_)
    ]
