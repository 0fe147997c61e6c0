"""Saved reference inputs and outputs for a user's ONNX file: Polygraphy JSON or NumPy .npz.

Polygraphy users already have these: ``polygraphy run model.onnx --onnxrt --save-inputs
inputs.json --save-outputs outputs.json`` (or the same from the PyTorch side). Its JSON is read
here without depending on Polygraphy:

- an array is ``{"array": <base64 of np.save bytes>, "polygraphy_class": "ndarray"}`` (older
  files mark it with ``"__polygraphy_encoded_ndarray"`` instead of ``polygraphy_class``);
- saved inputs are a list of iterations, each ``{input name: array}``;
- saved outputs are a ``RunResults``: ``{"lst": [[runner name, [iteration, ...]], ...]}``, an
  iteration being ``{"outputs": {output name: array or {"values": array}}, "runner_name": ...}``.

The first iteration is used, and of the outputs the first runner's. An ``.npz`` holds one array
per input (or output) name.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ccnbench.errors import UsageError

_LEGACY_MARKER = "__polygraphy_encoded_ndarray"
_loaded: dict[tuple[str, ...], SavedReference] = {}


@dataclass(frozen=True)
class SavedReference:
    inputs: tuple[Tensor, ...]  # float32, in the file's input order
    outputs: tuple[Tensor, ...]  # float64, in the file's output order

    @property
    def batch(self) -> int:
        return int(self.inputs[0].shape[0])


def load_saved(
    inputs_path: str, outputs_path: str, input_names: tuple[str, ...], output_names: tuple[str, ...]
) -> SavedReference:
    """Read (once per process) saved inputs and outputs and order them by the file's names."""
    key = (inputs_path, outputs_path, *input_names, "|", *output_names)
    if key not in _loaded:
        inputs = _by_name(_arrays(Path(inputs_path), "inputs"), input_names, inputs_path, "input")
        outputs = _by_name(_arrays(Path(outputs_path), "outputs"), output_names, outputs_path, "output")
        batches = {int(np.shape(a)[0]) if np.ndim(a) else 0 for a in inputs}
        if len(batches) != 1 or 0 in batches:
            raise UsageError(
                f"{inputs_path}: the inputs must share one batch size (dim 0), got {sorted(batches)}"
            )
        _loaded[key] = SavedReference(
            tuple(torch.from_numpy(np.ascontiguousarray(a)).float() for a in inputs),
            tuple(torch.from_numpy(np.ascontiguousarray(a)).double() for a in outputs),
        )
    return _loaded[key]


def _by_name(arrays: dict[str, np.ndarray], names: tuple[str, ...], path: str, what: str) -> list[np.ndarray]:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(
            f"{path}: no {what} named {missing[0]!r} (it holds {', '.join(sorted(arrays)) or 'nothing'})"
        )
    return [arrays[n] for n in names]


def _arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    """Name -> array from a .npz or a Polygraphy JSON file of saved inputs or outputs."""
    if not path.is_file():
        raise UsageError(f"no saved {what} at {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        return _from_polygraphy(json.loads(path.read_text()), what)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path} is not a .npz or Polygraphy JSON file of saved {what}: {exc}") from exc


def _from_polygraphy(data: Any, what: str) -> dict[str, np.ndarray]:
    if isinstance(data, dict) and "lst" in data:  # RunResults: take the first runner's first iteration
        runners = data["lst"]
        if not runners or not runners[0][1]:
            raise ValueError("the RunResults hold no iterations")
        data = runners[0][1][0]["outputs"]
    elif isinstance(data, list):  # saved inputs: a list of iterations
        if not data:
            raise ValueError(f"the file holds no {what}")
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping of names to arrays, got {type(data).__name__}")
    return {name: _decode(value) for name, value in data.items()}


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, dict) and "values" in value and "array" not in value:
        return _decode(value["values"])  # a LazyArray wrapping an array
    if isinstance(value, dict) and "array" in value:
        if value.get("polygraphy_class", "ndarray") != "ndarray" and _LEGACY_MARKER not in value:
            raise ValueError(f"unexpected object {value.get('polygraphy_class')!r}")
        raw = base64.b64decode(value["array"].encode(), validate=True)
        return np.load(io.BytesIO(raw), allow_pickle=False)
    raise ValueError("an entry is not an encoded array")


def encode_array(array: np.ndarray) -> dict[str, str]:
    """An array as Polygraphy writes it (used by tests and by anyone making reference files)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode(), "polygraphy_class": "ndarray"}
