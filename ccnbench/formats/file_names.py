"""How ccnbench names the files it builds, and where it may write them.

One rule for every artifact (ONNX export, user model export, ``.pt2`` package): the name says
what the file is, in dash-separated parts, and ends in a short hash of everything that changes
its bytes, so a changed model, option or tool version never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ccnbench.errors import CcnbenchError


def identity_digest(identity: Mapping[str, Any]) -> str:
    """A short hash of everything that makes a file what it is (JSON, keys sorted)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def weights_digest(module: nn.Module) -> str:
    """A short hash of a module's class and weights: edited weights never reuse a stale file."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:8]


def precision_tag(precision: str, io: str) -> str:
    """``fp16``, or ``fp16-io16`` for a graph whose inputs and outputs are fp16 too."""
    return f"{precision}-io16" if io == "fp16" else precision


def file_name(what: Sequence[str], digest: str, suffix: str) -> str:
    """``<what, dash-joined>-<digest><suffix>``: the name of every artifact ccnbench builds."""
    return "-".join([*what, digest]) + suffix


def writable_dir(path: Path) -> Path:
    """``path``, created if need be; a clear error when it cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CcnbenchError(f"cannot create output directory {path}: {exc.strerror}") from exc
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise CcnbenchError(f"output directory {path} is not writable")
    return path
