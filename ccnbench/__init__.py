"""ccnbench: build, export, check and benchmark multi-branch 3D CNNs across deployment formats."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ccnbench")
except PackageNotFoundError:  # run from a source tree with PYTHONPATH=. (the GPU machine)
    __version__ = "0.1.0+src"

__all__ = ["__version__"]
