"""Lazy imports of optional, heavy dependencies with one actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType

from ccnbench.errors import MissingDependency

# What to install when a module is missing: the pip line a user can paste.
_INSTALL_HINTS = {
    "tensorrt": "pip install 'ccnbench[tensorrt]'",
    "onnxruntime": "pip install onnxruntime (or 'ccnbench[gpu]' for CUDA)",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependency whose message is the install line.

    ``extra`` names the ccnbench extra that provides it when no specific hint exists.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module) or (
            f"pip install 'ccnbench[{extra}]'" if extra else f"pip install {module}"
        )
        raise MissingDependency(f"{module} is not installed ({exc.msg}): {hint}") from exc


def optional(module: str) -> ModuleType | None:
    """Import ``module`` if it is installed and importable, else None (for reporting)."""
    try:
        return importlib.import_module(module)
    except Exception:  # a broken install (missing CUDA libraries) is as absent as a missing one
        return None
