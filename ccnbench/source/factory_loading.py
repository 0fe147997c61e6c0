"""Importing a user's model factory: ``package.module:function`` or ``path/to/file.py:function``.

Import problems are usage errors (the sweep has not started); a factory that returns something
other than an ``nn.Module`` fails when called, inside the worker that builds it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ccnbench.errors import CcnbenchError, UsageError


def is_file(module_part: str) -> bool:
    """Whether the part before ``:`` names a file rather than an importable module."""
    return module_part.endswith(".py") or "/" in module_part


def code_digest(factory: str) -> str:
    """The factory file's content hash ('' for an installed module: its version is its identity)."""
    module_part = factory.rpartition(":")[0]
    if not is_file(module_part):
        return ""
    try:
        return hashlib.sha256(Path(module_part).read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


def load_factory(factory: str) -> Callable[[], nn.Module]:
    """The factory as a call that builds the module (checked to be an ``nn.Module``)."""
    module_part, _, function = factory.rpartition(":")
    try:
        if is_file(module_part):
            module = _exec_file(Path(module_part))
        else:
            module = importlib.import_module(module_part)
    except ImportError as exc:
        raise UsageError(f"--model: cannot import {module_part!r}: {exc}") from exc
    except SyntaxError as exc:
        raise UsageError(f"--model: {Path(module_part).name} line {exc.lineno}: {exc.msg}") from exc
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UsageError(f"--model: {module_part!r} has no callable {function!r}")

    def build_module() -> nn.Module:
        made = fn()
        if not isinstance(made, nn.Module):
            raise CcnbenchError(f"--model: {factory} returned {type(made).__name__}, not a torch.nn.Module")
        return made

    return build_module


def _exec_file(path: Path) -> Any:
    """A user's .py file, executed once per process (like an imported module)."""
    if not path.is_file():
        raise UsageError(f"--model: no file {path}")
    name = f"ccnbench_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # a broken file must not look loaded next time
            raise
    return module
