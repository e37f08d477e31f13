"""The shape of the code: imports run one way. Read with ast from every project file outside tests/,
imports inside functions included, so a circle can't hide behind a lazy import.

Scripts are the top-level .py files (train.py, eval.py, reproduce.py, bench.py) and every package's
__main__.py; everything else is library. The rules: no circle between files; no script imports a
script; no library module imports a script; no circle between packages (two packages importing each
other included), counting library modules only (a package's __main__ may import upward).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from data.encodings import ENCODINGS as ENCODING_NAMES

from .conftest import ROOT

SKIP_DIRS = {"tests", "build", "dist", "runs", "__pycache__"}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the top-level .py files and every package (a folder with
    __init__.py) under `root`, tests and hidden folders left out."""
    modules = {p.stem: p for p in root.glob("*.py")}
    for init in root.glob("*/**/__init__.py"):
        package = init.parent
        parts = package.relative_to(root).parts
        if any(p in SKIP_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in parts):
            continue
        for path in package.glob("*.py"):
            name = ".".join(parts) if path.name == "__init__.py" else ".".join((*parts, path.stem))
            modules[name] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts:
                found.add(".".join(parts))
                break
    return found - {name}


def graph(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    """(module -> the project modules it imports, the scripts among them)."""
    modules = project_modules(root)
    scripts = {n for n, p in modules.items() if p.name == "__main__.py" or p.parent == root}
    return {name: imports_of(name, path, modules) for name, path in modules.items()}, scripts


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of the directed graph, as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None
    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def violations(root: Path) -> list[str]:
    edges, scripts = graph(root)
    out = []
    cycle = find_cycle(edges)
    if cycle:
        out.append("circle between files: " + " -> ".join(cycle))
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            if b in scripts:
                out.append(f"{'script' if a in scripts else 'library module'} {a} imports the script {b}")
    packages: dict[str, set[str]] = {}
    for a, targets in edges.items():
        if a in scripts:
            continue
        for b in targets:
            if b not in scripts and a.split(".")[0] != b.split(".")[0]:
                packages.setdefault(a.split(".")[0], set()).add(b.split(".")[0])
    cycle = find_cycle(packages)
    if cycle:
        out.append("circle between packages: " + " -> ".join(cycle))
    return out


def test_imports_run_one_way():
    assert violations(ROOT) == []


def test_the_graph_sees_lazy_and_relative_imports():
    edges, scripts = graph(ROOT)
    assert {"train", "eval", "reproduce", "bench", "flops.__main__", "qwen_min.__main__"} <= scripts
    assert "experiment.trainer" in edges["train"]
    assert "flops.conventions" in edges["qwen_min.model"]
    assert "experiment.models" in edges["flops.__main__"]
    assert {"experiment.settings", "experiment.batches"} <= edges["experiment.trainer"]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"lib/__init__.py": "", "lib/a.py": "def f():\n    from .b import g\n", "lib/b.py": "from lib.a import f\n"},
     "circle between files: lib.a -> lib.b -> lib.a"),
    ({"one.py": "import two\n", "two.py": "x = 1\n"}, "script one imports the script two"),
    ({"lib/__init__.py": "", "lib/a.py": "def f():\n    import tool\n", "tool.py": ""},
     "library module lib.a imports the script tool"),
    ({"p/__init__.py": "", "p/a.py": "from q.b import x\n", "q/__init__.py": "", "q/b.py": "x = 1\n",
      "q/c.py": "from p import a\n"}, "circle between packages: p -> q -> p"),
])
def test_each_rule_fails_on_a_tree_that_breaks_it(tmp_path, files, expected):
    assert expected in violations(write(tmp_path, files))


def test_a_package_main_may_import_upward(tmp_path):
    files = {"low/__init__.py": "", "low/core.py": "", "low/__main__.py": "from high.x import y\n",
             "high/__init__.py": "", "high/x.py": "from low.core import *\ny = 1\n"}
    assert violations(write(tmp_path, files)) == []


def test_scripts_are_short_files_fit_in_a_sitting_and_functions_on_a_screen():
    """train.py, eval.py and reproduce.py are argument parsing over the library: at most 250 lines;
    no other file of the project over 400 lines, no function over 60."""
    for script in ("train.py", "eval.py", "reproduce.py"):
        assert len((ROOT / script).read_text().splitlines()) <= 250, script
    long = []
    for name, path in project_modules(ROOT).items():
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


ENCODINGS_MODULE = "experiment.encodings"  # the one module that may ask an encoding its name


def asks_the_name(root: Path, exempt: str = ENCODINGS_MODULE, names=tuple(ENCODING_NAMES),
                  kind="QwenForValueForecasting") -> list[str]:
    """Where a library module other than `exempt` compares something with an encoding's name
    (==, !=, in) or tests isinstance(..., QwenForValueForecasting): 'module:line' each."""
    _, scripts = graph(root)
    found = []
    for name, path in project_modules(root).items():
        if name in scripts or name == exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                consts = [c for s in sides for c in ([s] if isinstance(s, ast.Constant) else
                                                     getattr(s, "elts", []) if isinstance(s, (ast.Tuple, ast.List, ast.Set)) else [])]
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    found.append(f"{name}:{node.lineno}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                  and len(node.args) == 2 and kind in ast.unparse(node.args[1])):
                found.append(f"{name}:{node.lineno}")
    return found


def test_the_library_asks_an_encoding_object_not_its_name():
    """An encoding is chosen by name once (experiment.encodings) and then only called: at most 3
    places elsewhere in the library compare a name or test for the continuous model."""
    places = asks_the_name(ROOT)
    assert len(places) <= 3, places


@pytest.mark.parametrize("code, hits", [
    ("def f(s):\n    return s.encoding == 'continuous'\n", 1),
    ("def f(e):\n    return e in ('bins', 'digits')\n", 1),
    ("def f(m):\n    return isinstance(m, QwenForValueForecasting)\n", 1),
    ("def f(e):\n    return e.trained_layers\n", 0),
])
def test_the_encoding_rule_sees_each_way_of_asking_the_name(tmp_path, code, hits):
    tree = write(tmp_path, {"lib/__init__.py": "", "lib/a.py": code, "lib/encodings.py": code})
    found = asks_the_name(tree, exempt="lib.encodings")
    assert len(found) == hits and all(f.startswith("lib.a:") for f in found)


def test_the_command_line_parser_imports_nothing_of_the_project():
    edges, _ = graph(ROOT)
    assert edges["commandline"] == set()
    assert {"train", "eval", "bench", "flops.__main__", "qwen_min.__main__", "data.simulate"} <= {
        name for name, targets in edges.items() if "commandline" in targets}
