"""Every module imports on a CPU-only machine, and heavy optional libraries stay lazy.

(pynvml is not checked: torch itself imports it when nvidia-ml-py is installed.)
"""

import ast
import importlib
import importlib.util
import itertools
import pkgutil
import re
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


PACKAGE = Path(ccnbench.__file__).parent
REPOSITORY = PACKAGE.parent

#: The package's floors, from the ground up: the shared records, then one subpackage per stage in
#: the order data flows, then the commands. A module imports only from its own floor or below
#: (the README's layout table follows this order).
FLOORS = (
    "ccnbench", "errors", "fileio", "deps", "progress", "environment",  # shared records
    "models", "formats", "source", "backends", "measure",  # what runs, and measuring it
    "results", "shard",  # a run's results, and runs put back together
    "roofline",  # what the machine can do, and how far a result is from it
    "answers", "run", "training",  # reading runs; running them (adaptive runs ask the answers)
    "explain",  # profiling planned cases layer by layer
    "cli", "__main__",
)  # fmt: skip


def _module_graph() -> dict[str, set[str]]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPOSITORY).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: _imported_modules(path, name, set(files)) for name, path in files.items()}


def _floor(module: str) -> str:
    """A module's floor: its subpackage (``ccnbench.run.plan`` -> ``run``), or itself at the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_module_imports_another_in_a_circle():
    """Dependencies point one way, counting the imports hidden inside functions and under
    TYPE_CHECKING: a deferred import hides a loop, it does not remove it."""
    graph = _module_graph()
    assert graph["ccnbench.cli"], "the parser found no imports at all"
    loops = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert loops == [], f"modules that import each other in a circle: {loops}"


def test_subpackages_import_only_their_own_floor_or_below():
    """The tree shows the pipeline only if its stages depend one way: models below formats below
    backends below measuring, and the runs and answers above them (``FLOORS``)."""
    graph = _module_graph()
    assert {_floor(m) for m in graph} == set(FLOORS), "a new root module or subpackage needs its floor"
    upward = sorted(
        f"{a} imports {b}"
        for a, imported in graph.items()
        for b in imported
        if FLOORS.index(_floor(b)) > FLOORS.index(_floor(a))
    )
    assert upward == []


def test_the_package_root_holds_only_entry_points_and_shared_records():
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root) <= 12, root
    for folder in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        summary = (doc or "").split("\n\n")[0]
        assert summary and len(summary.splitlines()) <= 2, (
            f"{folder.name}/__init__.py says its job in a line or two"
        )


def _texts() -> list[Path]:
    """Every file of the repository that may name a ccnbench module: code, docs, scripts, CI (not
    this file, whose examples name modules that do not exist on purpose)."""
    found = [REPOSITORY / "README.md", REPOSITORY / "Makefile", REPOSITORY / ".ci" / "run"]
    for folder, pattern in (("ccnbench", "*.py"), ("tests", "*.py"), ("scripts", "*"), ("docs", "*.md")):
        found += [
            p for p in (REPOSITORY / folder).rglob(pattern) if p.is_file() and "__pycache__" not in p.parts
        ]
    return [p for p in found if p.resolve() != Path(__file__).resolve()]


def _runnable(name: str) -> bool:
    """``python -m name`` runs something: a module with a ``__main__`` guard, or a package with a
    ``__main__`` module."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    return '__name__ == "__main__"' in Path(spec.origin).read_text(encoding="utf-8")


def _module_arguments(path: Path) -> set[str]:
    """The modules a file starts with ``-m``: in text (``python -m ccnbench.x``), and in Python as
    an argument list (``[sys.executable, "-m", "ccnbench.x", ...]``)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = set(re.findall(r"-m\s+(ccnbench[\w.]*)", text))
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.List, ast.Tuple)):
                items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                found.update(b for a, b in itertools.pairwise(items) if a == "-m" and isinstance(b, str))
    return {name for name in found if name.split(".")[0] == "ccnbench"}


def test_every_module_started_with_dash_m_exists_and_runs():
    """Worker processes are started by module name in a string, which no import checks: a moved
    module must take its ``-m`` strings along (the sweep's worker, train-bench's processes)."""
    named = {name: path for path in _texts() for name in _module_arguments(path)}
    assert {"ccnbench.run.worker", "ccnbench.training.bench"} <= set(named), sorted(named)
    stale = sorted(
        f"{path.relative_to(REPOSITORY)}: -m {name}" for name, path in named.items() if not _runnable(name)
    )
    assert stale == []


def test_module_arguments_are_found_in_text_and_in_argument_lists(tmp_path):
    code = tmp_path / "x.py"
    code.write_text('"""Run ``python -m ccnbench.nowhere``."""\ncmd = [exe, "-m", "ccnbench.gone", "a"]\n')
    assert _module_arguments(code) == {"ccnbench.nowhere", "ccnbench.gone"}
    assert not _runnable("ccnbench.gone") and _runnable("ccnbench.run.worker") and _runnable("ccnbench")


#: ``ccnbench.<key>`` strings that are not modules: the ONNX metadata keys the exporter stamps.
NOT_MODULES = {"ccnbench.export_seconds", "ccnbench.layout", "ccnbench.precision", "ccnbench.torch"}
DOTTED = re.compile(r"\bccnbench(?:\.[A-Za-z_]\w*)+(?![\w-])")


def _resolves(dotted: str) -> bool:
    """``ccnbench.run.plan.expand``: a module, then attributes of it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(name)
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_dotted_ccnbench_name_in_code_and_docs_exists():
    """Docstrings, comments, the README and docs/ name modules and functions by their dotted path
    (``ccnbench.answers.stats.pair``); a move must not leave them pointing nowhere."""
    stale = sorted(
        f"{path.relative_to(REPOSITORY)}: {name}"
        for path in _texts()
        for name in set(DOTTED.findall(path.read_text(encoding="utf-8", errors="replace")))
        if name not in NOT_MODULES and not _resolves(name)
    )
    assert stale == []
    assert _resolves("ccnbench.models.graph_merge.merge_branches") and not _resolves("ccnbench.timing")
