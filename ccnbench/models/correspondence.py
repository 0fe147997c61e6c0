"""Which module of the merged network does the work of each module of the kept one.

``ccnbench explain`` puts a kept and a merged profile side by side row by row; the rows must
match by what the merge did, not by name. Both functions return a renamer from a module path
(``extractors.1.0.conv``) to the path of the same work in the merged network
(``extractor.0.conv``), in the merged network's own names with the stacking wrapper's inner
``layer`` folded into the wrapper (so a merged Conv and its reshapes are one row).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from ccnbench.models.branch_modules import BatchFolded, StackedBranches, StackedLayer
from ccnbench.models.fusion import DecisionFusion, EarlyFusion, FeatureFusion, ModelFusion, MultiTask

Renamer = Callable[[str], str]

# Per built-in variant: (kept path pattern, merged path), first match wins; see merge.merge.
_BUILTIN_RULES: dict[type, tuple[tuple[str, str], ...]] = {
    EarlyFusion: ((r"^classifier", "head"),),
    FeatureFusion: ((r"^classifier", "head"),),
    MultiTask: ((r"^trunk", "extractor"), (r"^(classifier|regressor)", "head")),
    ModelFusion: ((r"^extractors\.\d+", "extractor"), (r"^classifier", "head")),
    DecisionFusion: (
        (r"^members\.\d+\.extractor", "extractor"),
        (r"^members\.\d+\.classifier", "head"),
        (r"^members\.\d+$", ""),  # a member's own ops (flatten): the merged forward's
    ),
}


def builtin_renamer(kept: nn.Module) -> Renamer:
    """Kept path -> merged path for a ccnbench fusion variant (``models.merge.merge``)."""
    rules = next((r for cls, r in _BUILTIN_RULES.items() if isinstance(kept, cls)), None)
    if rules is None:
        raise TypeError(f"{type(kept).__name__} is not a ccnbench fusion variant")
    compiled = [(re.compile(pattern), merged) for pattern, merged in rules]

    def rename(path: str) -> str:
        for pattern, merged in compiled:
            if pattern.match(path):
                return pattern.sub(merged, path, count=1).lstrip(".")
        return path

    return rename


def graph_renamers(merged: nn.Module) -> tuple[Renamer, Renamer]:
    """(kept -> merged, merged -> merged) renamers for a module merged by ``graph_merge``.

    Each merged call records the kept calls it replaced (``merged_from``, relative to the module
    it was rewritten in); their work now runs under ``<merged>.branch`` (stacked weights) or
    ``<merged>.module`` (one call on the folded batch). Paths outside every group keep their names.
    """
    prefixes: dict[str, str] = {}
    folded_layers: dict[str, str] = {}
    for path, module in merged.named_modules():
        if isinstance(module, (StackedBranches, BatchFolded)):
            parent = path.rpartition(".")[0]
            inner = f"{path}.branch" if isinstance(module, StackedBranches) else f"{path}.module"
            for target in getattr(module, "merged_from", ()):
                prefixes[f"{parent}.{target}" if parent else target] = inner
        elif isinstance(module, StackedLayer):
            folded_layers[f"{path}.layer"] = path

    def canonical(path: str) -> str:
        for inner, wrapper in folded_layers.items():
            if path == inner or path.startswith(inner + "."):
                return wrapper + path[len(inner) :]
        return path

    def rename(path: str) -> str:
        for kept, inner in prefixes.items():
            if path == kept or path.startswith(kept + "."):
                return canonical(inner + path[len(kept) :])
        return path

    return rename, canonical
