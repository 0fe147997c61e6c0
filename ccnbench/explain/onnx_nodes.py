"""Which module each ONNX node came from, read from the exporter's node metadata.

``torch.onnx.export(dynamo=True)`` stamps every node with ``pkg.torch.onnx.name_scopes``: the
module paths from the root down to the op (``['', 'extractors.0', 'extractors.0.0',
'extractors.0.0.conv', 'conv3d']``); node names (``node_Conv_88``) carry no path. The node's
owner is the innermost module: the second-to-last scope. A file without that metadata (exported
by another tool) maps each node to itself, by name, and says so.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

NAME_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class NodeOwners:
    """ONNX node name -> owner module path ('' is the root module's own forward)."""

    owners: dict[str, str]
    op_types: dict[str, str]
    from_metadata: bool
    # Output tensor -> node: OpenVINO names a layer after its output when that is a graph output.
    producers: dict[str, str] = field(default_factory=dict)

    def node(self, name: str) -> str | None:
        """The ONNX node called ``name``, or producing the tensor ``name``; None if neither."""
        return name if name in self.owners else self.producers.get(name)

    def owner(self, name: str) -> str | None:
        node = self.node(name)
        return None if node is None else self.owners[node]

    @property
    def note(self) -> str | None:
        if self.from_metadata:
            return None
        return f"no exporter metadata ({NAME_SCOPES}) in this file: rows are ONNX node names"


def node_owners(path: Path | str) -> NodeOwners:
    import onnx  # a dependency of every ONNX target; lazy like the rest

    graph = onnx.load(str(path), load_external_data=False).graph
    owners: dict[str, str] = {}
    op_types: dict[str, str] = {}
    producers: dict[str, str] = {}
    with_metadata = 0
    for node in graph.node:
        op_types[node.name] = node.op_type
        producers.update((out, node.name) for out in node.output if out)
        scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), None)
        owner = owner_from_scopes(scopes) if scopes else None
        if owner is None:
            owners[node.name] = node.name
        else:
            owners[node.name] = owner
            with_metadata += 1
    if with_metadata == 0:
        return NodeOwners({n: n for n in op_types}, op_types, False, producers)
    return NodeOwners(owners, op_types, True, producers)


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
        modules = tuple(dict.fromkeys(owners.owners[n] for n in covered))
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
