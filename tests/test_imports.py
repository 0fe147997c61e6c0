"""Every module imports on a CPU-only machine, and heavy optional libraries stay lazy.

(pynvml is not checked: torch itself imports it when nvidia-ml-py is installed.)
"""

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

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


def _imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Every ccnbench module ``path`` imports anywhere: top level, inside functions, under
    ``if TYPE_CHECKING:``, absolute or relative; ``from ccnbench import x`` counts x when x is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_strongly_connected_finds_a_loop_and_only_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(map(sorted, _strongly_connected(graph))) == [["a", "b", "c"], ["d"], ["e"]]


def test_no_module_imports_another_in_a_circle():
    """Dependencies point one way (commands -> planning -> execution -> backends -> data), counting
    the imports hidden inside functions and under TYPE_CHECKING: a deferred import hides a loop, it
    does not remove it."""
    root = Path(ccnbench.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imported_modules(path, name, set(files)) for name, path in files.items()}
    assert graph["ccnbench.cli"], "the parser found no imports at all"
    loops = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert loops == [], f"modules that import each other in a circle: {loops}"
