"""Every module imports on a CPU-only machine, and heavy optional libraries stay lazy.

(pynvml is not checked: torch itself imports it when nvidia-ml-py is installed.)
"""

import importlib
import pkgutil
import subprocess
import sys

import ccnbench


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(ccnbench.__path__, "ccnbench.")]
    assert "ccnbench.cli" in names
    for name in names:
        importlib.import_module(name)


def test_no_heavy_optional_import_at_module_level():
    code = (
        "import pkgutil, importlib, sys, ccnbench\n"
        "for m in pkgutil.walk_packages(ccnbench.__path__, 'ccnbench.'): importlib.import_module(m.name)\n"
        "print(','.join(sorted(k for k in ('tensorrt', 'onnxruntime', 'matplotlib') if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
