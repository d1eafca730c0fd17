"""The layout's rules, checked on the source: no import cycle among dsv's modules (imports inside
functions and under ``if TYPE_CHECKING`` count), and dependencies pointing one way down the layers
(plugins, config, kkt, store <- builtin <- synthesis <- evaluation <- pipeline <- stages <- cli, api).

An import of ``a.b.c`` is an edge to ``a.b.c`` only; the implicit import of its parent packages
is not counted (as import-linter and pydeps count)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "dsv"

# lowest first; a module may import modules of its own layer or of lower ones
LAYERS = [
    ("dsv", "dsv.errors"),
    ("dsv.plugins", "dsv.config", "dsv.kkt", "dsv.store"),
    ("dsv.builtin",),
    ("dsv.synthesis",),
    ("dsv.evaluation",),
    ("dsv.pipeline",),
    ("dsv.stages", "dsv.builtin.stages"),
    ("dsv.api", "dsv.cli"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The dsv modules ``path`` imports, wherever the import statement stands."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from dsv import kkt" imports the module dsv.kkt; "from dsv.kkt import x" the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def layer_of(name: str) -> int:
    best, depth = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    return best


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    edges = graph()
    assert "dsv.pipeline" in edges["dsv.cli"]  # imported inside cli's functions only
    assert "dsv.store.verify" in edges["dsv.cli"]


def test_no_import_cycle_among_dsv_modules():
    assert find_cycle(graph()) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_dependencies_point_down_the_layers():
    upward = []
    for name, targets in graph().items():
        assert layer_of(name) >= 0, f"{name} is in no layer of this test"
        upward += [f"{name} -> {t}" for t in sorted(targets) if layer_of(t) > layer_of(name)]
    assert upward == []


def test_stages_are_found_only_through_the_registry():
    # the orchestrator names no stage and imports no stage module
    source = (PACKAGE / "pipeline" / "orchestrator.py").read_text()
    assert not [t for t in graph()["dsv.pipeline.orchestrator"] if t.startswith("dsv.stages")]
    for stage in ("select", "retrain", "analyse", "interpolate", "edit", "export", "evaluate"):
        assert f'"{stage}"' not in source


def test_py_typed_ships_with_the_package():
    assert (PACKAGE / "py.typed").is_file()
    assert 'dsv = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_imports_and_answers_help(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
