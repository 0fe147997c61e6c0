"""Which module each ONNX node came from, read from the exporter's node metadata.

``torch.onnx.export(dynamo=True)`` stamps every node with ``pkg.torch.onnx.name_scopes``: the
module paths from the root down to the op (``['', 'extractors.0', 'extractors.0.0',
'extractors.0.0.conv', 'conv3d']``); node names (``node_Conv_88``) carry no path. The node's
owner is the innermost module: the second-to-last scope. The exporter's own optimizer folds a
BatchNorm into the Conv before it and keeps only the BatchNorm's scopes on the result; the Conv
is found by running the module once (``conv_before_norm``), so the node covers both. A file
without that metadata (exported by another tool) maps each node to itself, by name, and says so.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
# The onnxscript rewriter's record of which rules made a node, and the rule that folds a
# BatchNorm into the Conv before it (the node keeps only the BatchNorm's scopes).
RULE_NAME = "pkg.onnxscript.rewriter.rule_name"
FOLD_RULE = "FuseBatchNormIntoConv"


@dataclass(frozen=True)
class NodeOwners:
    """ONNX node name -> the module paths whose work it is ('' is the root module's own forward):
    one path, or two for a Conv the exporter folded a BatchNorm into."""

    owners: dict[str, tuple[str, ...]]
    from_metadata: bool
    # Output tensor -> node: OpenVINO names a layer after its output when that is a graph output.
    producers: dict[str, str] = field(default_factory=dict)

    def node(self, name: str) -> str | None:
        """The ONNX node called ``name``, or producing the tensor ``name``; None if neither."""
        return name if name in self.owners else self.producers.get(name)

    def modules(self, name: str) -> tuple[str, ...]:
        """The modules of the node called ``name`` (or producing that tensor); () if none."""
        node = self.node(name)
        return () if node is None else self.owners[node]

    def modules_of(self, names: Sequence[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for n in names for m in self.modules(n)))

    @property
    def note(self) -> str | None:
        if self.from_metadata:
            return None
        return f"no exporter metadata ({NAME_SCOPES}) in this file: rows are ONNX node names"


def node_owners(path: Path | str, folds: Mapping[str, str] | None = None) -> NodeOwners:
    """The owners of every node of the file at ``path``. ``folds`` (BatchNorm path -> the Conv path
    it normalises, ``conv_before_norm``) lets a Conv the exporter's ``FuseBatchNormIntoConv`` rule
    made, which carries only the BatchNorm's scopes, cover the Conv's module too."""
    import onnx  # a dependency of every ONNX target; lazy like the rest

    graph = onnx.load(str(path), load_external_data=False).graph
    owners: dict[str, tuple[str, ...]] = {}
    op_types: dict[str, str] = {}
    producers: dict[str, str] = {}
    with_metadata = 0
    for node in graph.node:
        op_types[node.name] = node.op_type
        producers.update((out, node.name) for out in node.output if out)
        metadata = {p.key: p.value for p in node.metadata_props}
        owner = owner_from_scopes(metadata[NAME_SCOPES]) if NAME_SCOPES in metadata else None
        if owner is None:
            owners[node.name] = (node.name,)
            continue
        with_metadata += 1
        folded = FOLD_RULE in metadata.get(RULE_NAME, "") and folds and owner in folds
        owners[node.name] = (folds[owner], owner) if folded and folds else (owner,)
    if with_metadata == 0:
        return NodeOwners({n: (n,) for n in op_types}, False, producers)
    return NodeOwners(owners, True, producers)


def has_folds(path: Path | str) -> bool:
    """Whether the exporter folded any BatchNorm into a Conv in this file (cheap: metadata only)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(p.key == RULE_NAME and FOLD_RULE in p.value for n in graph.node for p in n.metadata_props)


def conv_before_norm(module: nn.Module, inputs: Sequence[Tensor]) -> dict[str, str]:
    """BatchNorm path -> the path of the Conv whose output it normalises, from one forward pass.

    Matched by storage: a norm's input is the conv's output or a view of it (a merged network
    reshapes between its stacked layers). Every output is kept alive during the pass so no
    storage is reused. These are the pairs an exporter may fold into one Conv.
    """
    produced: dict[tuple[int, int], str] = {}
    keep: list[Tensor] = []
    pairs: dict[str, str] = {}

    def conv_done(path: str) -> Any:
        def hook(_: nn.Module, __: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                keep.append(out)
                produced[(out.data_ptr(), out.numel())] = path

        return hook

    def norm_starts(path: str) -> Any:
        def hook(_: nn.Module, args: Any) -> None:
            x = args[0] if args else None
            if isinstance(x, Tensor) and (x.data_ptr(), x.numel()) in produced:
                pairs[path] = produced[(x.data_ptr(), x.numel())]

        return hook

    handles = []
    for path, sub in module.named_modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            handles.append(sub.register_forward_hook(conv_done(path)))
        elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
            handles.append(sub.register_forward_pre_hook(norm_starts(path)))
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def fused_cover(optimized: Path | str, owners: NodeOwners) -> dict[str, tuple[str, ...]]:
    """Per node of a runtime's optimized graph, the module paths of the file's nodes it covers:
    the node of the same name, and the nodes whose output tensors it now produces (a Conv fused
    with the ReLU after it writes the ReLU's output). Nodes covering no node of the file are
    left out: the runtime added them."""
    import onnx

    graph = onnx.load(str(optimized), load_external_data=False).graph
    cover = {}
    for node in graph.node:
        covered = [node.name] if node.name in owners.owners else []
        covered += [owners.producers[o] for o in node.output if o in owners.producers]
        modules = owners.modules_of(covered)
        if modules:
            cover[node.name] = modules
    return cover


def owner_from_scopes(text: str) -> str | None:
    """The innermost module of a ``name_scopes`` value; None when it cannot be read."""
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not scopes:
        return None
    return str(scopes[-2]) if len(scopes) >= 2 else ""
