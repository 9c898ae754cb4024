"""The package's shape: layers that only import downwards, no import circles, own imports at the
top of each file, and a command line that starts without the heavy libraries.

Layers, top to bottom (docs, Development): cli/commands -> tune -> run, mining, inference and
evaluation's first stage -> training -> data -> config -> the loss table, redaction -> errors,
storage, resources, evaluation's metrics, console. A module may import its own layer (without a
circle) or any layer below it, never one above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rerank_ray"

#: Layer of each module or subpackage, 0 the top; a dotted key (``evaluation.retrieval``) places one
#: module of a subpackage apart from the rest of it. The bottom layer's modules are leaves.
LAYERS = {
    "cli": 0,
    "commands": 0,
    "tune": 1,
    "run": 2,
    "mining": 2,
    "inference": 2,
    "evaluation.retrieval": 2,  # a bi-encoder's top-k in Ray Data: batch inference
    "training": 3,
    "data": 4,
    "evaluation.candidates": 4,  # a first stage's candidates applied to a BEIR split
    "config": 5,
    "losses": 6,
    "redaction": 6,
    "errors": 7,
    "storage": 7,
    "resources": 7,
    "evaluation": 7,
    "console": 7,
}
#: Heavy libraries the command line must not import before a command needs them.
HEAVY = ("torch", "ray", "transformers", "sentence_transformers", "matplotlib", "datasets")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself
        return -1
    for length in range(len(parts) - 1, 0, -1):  # the longest key that names the module or a package above it
        key = ".".join(parts[1 : 1 + length])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to the docs' Development page")


def own_imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, at the top of the file) for every import of the package's own
    modules; an import under ``if TYPE_CHECKING:`` at the top counts as at the top."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = set()
    for node in tree.body:
        top_level.add(id(node))
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            top_level.update(id(child) for child in node.body)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            # "from rerank_ray.data import reading" imports the module rerank_ray.data.reading
            targets = [
                f"{base}.{alias.name}"
                if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).exists()
                or (PACKAGE.parent / (f"{base}.{alias.name}".replace(".", "/") + ".py")).exists()
                else base
                for alias in node.names
            ]
        for target in targets:
            if target == "rerank_ray" or target.startswith("rerank_ray."):
                found.append((target, node, id(node) in top_level))
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[module_name(path)] = {target for target, _, _ in own_imports(path)}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path of modules, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                circle = visit(nxt)
                if circle:
                    return circle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return None


def test_no_import_circles():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_no_layer_imports_a_higher_one():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for target, node, _ in own_imports(path):
            if target != "rerank_ray" and layer_of(target) < layer_of(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}")
    assert upward == [], "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


def test_own_imports_stand_at_the_top_of_each_file():
    lazy = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target} inside a function or block"
        for path in sorted(PACKAGE.rglob("*.py"))
        for target, node, at_top in own_imports(path)
        if not at_top
    ]
    assert lazy == [], "\n".join(lazy)


#: A module past this many lines holds more than one concern: split it (the developers' guide).
MAX_MODULE_LINES = 800


def test_no_module_is_over_the_line_limit():
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path):
    """The walk above must be able to fail: a made-up graph with a circle, and a lower module
    importing a higher one, are caught."""
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layer_of("rerank_ray.config") > layer_of("rerank_ray.data.files") > layer_of("rerank_ray.run.driver")
    assert layer_of("rerank_ray.evaluation.metrics") > layer_of("rerank_ray.evaluation.candidates")
    assert layer_of("rerank_ray.evaluation.candidates") > layer_of("rerank_ray.evaluation.retrieval")
    with pytest.raises(AssertionError, match="is in no layer"):
        layer_of("rerank_ray.somewhere_new")


def test_the_command_line_starts_without_the_heavy_libraries():
    """``rerank-ray --help`` or a config error must not wait for torch, Ray or transformers to
    import (seconds each): the package imports them where a command first needs them."""
    code = f"import sys, rerank_ray.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
