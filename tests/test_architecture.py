"""The layout's rules, checked on the source: no import cycle among dsv's modules (imports inside
functions and under ``if TYPE_CHECKING`` count), dependencies pointing one way down the layers
(plugins, config, kkt, store <- models, training <- synthesis <- evaluation <- pipeline <- stages
<- builtin <- api, cli <- bench), and no benchmark script importing another.

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
    # what the built-in plugins register and the core uses directly: the model loader, the trainers
    ("dsv.models", "dsv.training"),
    ("dsv.synthesis",),
    ("dsv.evaluation",),
    ("dsv.pipeline",),
    ("dsv.stages",),
    # hook implementations registering factories of the layers below, as a third party's would
    ("dsv.builtin",),
    ("dsv.api", "dsv.cli"),
    # the benchmarks' library: above everything, imported by nothing in dsv
    ("dsv.bench",),
]
BENCHMARKS = ROOT / "benchmarks"


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


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    upward = []
    for name, targets in sorted(edges.items()):
        assert layer_of(name) >= 0, f"{name} is in no layer of this test"
        upward += [f"{name} -> {t}" for t in sorted(targets) if layer_of(t) > layer_of(name)]
    return upward


def test_dependencies_point_down_the_layers():
    assert upward_imports(graph()) == []


def test_the_layer_check_finds_an_upward_import():
    # the train stage loading weights through the built-in models plugin (as it once did)
    edges = {"dsv.stages.train": {"dsv.builtin.models"}, "dsv.builtin.models": {"dsv.models"}, "dsv.models": set()}
    assert upward_imports(edges) == ["dsv.stages.train -> dsv.builtin.models"]


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (``a`` of ``import a.b``), wherever the
    statement stands; a relative import counts as ``.``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add("." if node.level else (node.module or "").partition(".")[0])
    return out


def sibling_imports(scripts: dict[str, set[str]]) -> list[str]:
    """``script -> other`` for each script whose imports name another script (by module name, as
    ``sys.path`` puts a script's folder first), or that imports relatively."""
    names = set(scripts)
    return [f"{name} -> {t}" for name, imported in sorted(scripts.items()) for t in sorted(imported & (names | {"."}))]


def benchmark_imports() -> dict[str, set[str]]:
    return {p.stem: top_level_imports(p) for p in sorted(BENCHMARKS.glob("*.py"))}


def test_no_benchmark_script_imports_another():
    assert len(benchmark_imports()) >= 5  # the folder was found
    assert sibling_imports(benchmark_imports()) == []


def test_the_benchmark_check_finds_a_script_importing_another(tmp_path):
    (tmp_path / "gen.py").write_text("import json\n\ndef main():\n    from arms import PRESETS\n")
    (tmp_path / "arms.py").write_text("from dsv import config\n")
    (tmp_path / "table.py").write_text("import dsv.bench\n")
    scripts = {p.stem: top_level_imports(p) for p in tmp_path.glob("*.py")}
    assert sibling_imports(scripts) == ["gen -> arms"]


def test_no_benchmark_script_is_over_200_lines():
    long = {p.name: n for p in BENCHMARKS.glob("*.py") if (n := len(p.read_text().splitlines())) > 200}
    assert long == {}


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
