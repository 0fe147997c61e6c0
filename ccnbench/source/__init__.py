"""What a case runs: one of ccnbench's variants, a user's nn.Module factory, or a user's ONNX file.

Three sources behind one abstract interface (``ModelSource``, in ``base``): each knows its own
label, digest, module, ONNX artifact and oracle. Sources are frozen plain data: they cross into
worker processes as JSON (``to_dict``/``ModelSource.from_dict``). Whatever is expensive to make
lives in per-process caches keyed by the source's identity, never inside the source itself: a
factory's module and its merge in ``factory``, exported and described files in ``artifact_cache``.

Modules, one job each: ``base`` (the interface, layout check, oracle device), ``variant``,
``factory`` and ``onnx_file`` (the three sources), ``factory_loading`` (importing a user's
``module:function`` or ``file.py:function``), ``artifact_cache`` (files already described here).
"""

from ccnbench.source.base import KINDS, ModelSource, oracle_device
from ccnbench.source.factory import FactorySource
from ccnbench.source.onnx_file import OnnxFileSource
from ccnbench.source.variant import VariantSource

__all__ = ["KINDS", "FactorySource", "ModelSource", "OnnxFileSource", "VariantSource", "oracle_device"]
