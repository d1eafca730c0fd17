"""The documentation: the generated reference covers every key and command, with a description
each; the tutorials' code runs; the built site renders in headless Chromium with its navigation.

The tutorials run in a scratch folder (``pipelines/`` linked in): in each page, in order, every
``toml`` block with a ``title="file"`` is written to that file, every ``python`` block runs in one
namespace, and every ``dsv-pipeline`` line of a ``bash`` block runs in-process. A block after a
line ``<!-- not run by the tests: why -->`` is left out (it needs data or minutes the tests do
not have)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from conftest import REPO_ROOT
from test_report import browser, headless

from dsv import cli
from dsv.config import CORE_TABLES
from dsv.pipeline import reference
from dsv.plugins import DsvPluginManager

DOCS = REPO_ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
BLOCK = re.compile(r"(?:<!-- not run by the tests[^>]*-->\n)?```(\w+)([^\n]*)\n(.*?)```", re.S)


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builtins() -> DsvPluginManager:
    return DsvPluginManager(load_entry_points=False)


# ---- the reference -------------------------------------------------------------------------------


def test_every_key_and_option_has_a_description(builtins):
    missing = reference.undocumented(builtins)
    assert missing == [], f"keys without a '#:' comment (or ':param:' line): {missing}"


def test_the_config_reference_lists_every_key_a_pipeline_accepts(builtins):
    page = reference.config_markdown(builtins)
    paths = set(re.findall(r"^\| `([^`]+)` \|", page, re.M))
    for name, cls, _check in reference.core_tables():
        assert {f"{name}.{a.alias}" for a in attrs.fields(cls) if a.init} <= paths
    for entry in builtins.registry("stages").entries():
        table = entry.factory.table
        if table is not None:
            keys = {f"{entry.name}.{a.alias}" for a in attrs.fields(table) if a.init}
            assert keys <= paths, keys - paths
    named = {"synthesis.augmented_weight", "synthesis.domain", "model.input_range", "train.until", "stationarity.mode"}
    named |= {"tv.weight", "translate.strength", "noise.falloff", "sam.rho", "convnet.width", "digits.test_fraction"}
    assert named <= paths, named - paths
    assert {f"## [{t}]" for t in CORE_TABLES} <= set(page.splitlines())


def test_checks_come_from_the_validators_and_the_check_functions(builtins):
    rows = {
        row.split("|")[1].strip(" `"): row
        for row in reference.config_markdown(builtins).splitlines()
        if row.startswith("| `")
    }
    assert "must be positive" in rows["synthesis.lr_x"]
    assert "'clamp', 'penalty', 'none'" in rows["synthesis.domain"]
    assert "&gt;= 0" in rows["train.max_epochs"]  # an attrs validator (escaped for the page)
    assert "a file name inside the run store" in rows["export.png"]


def test_the_cli_reference_lists_every_subcommand_and_option():
    page = load_hook().cli_page()
    for command in ("run", "resume", "verify", "show", "export", "report", "plugins"):
        assert f"\n## {command}\n" in page
    for option in ("--set", "--fresh", "--nproc", "--disable-plugin", "--json", "--png", "--output"):
        assert f"`{option}`" in page


# ---- the tutorials -------------------------------------------------------------------------------


def run_page(page: Path, workdir: Path, monkeypatch) -> int:
    """Run a tutorial's blocks in ``workdir``; returns how many blocks ran."""
    (workdir / "pipelines").symlink_to(REPO_ROOT / "pipelines")
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "__tutorial__"}
    ran = 0
    for match in BLOCK.finditer(page.read_text()):
        if match.group(0).startswith("<!--"):
            continue
        language, info, body = match.groups()
        title = re.search(r'title="([^"]+)"', info)
        if language == "toml" and title:
            Path(title.group(1)).write_text(body)
        elif language == "python":
            exec(compile(body, f"{page.name}:{match.start()}", "exec"), namespace)
        elif language == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["dsv-pipeline"]:
                    assert cli.main(words[1:]) == 0, line
        else:
            continue
        ran += 1
    return ran


@pytest.mark.parametrize("page", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_the_tutorial_code_runs(page, tmp_path, monkeypatch):
    # each takes seconds (digits, tiny models, few iterations; ImageNet: 3 steps at 64 px)
    assert run_page(page, tmp_path, monkeypatch) >= 1


# ---- the built site ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: tox -e docs builds it first (DSV_DOCS_SITE); else it is built here."""
    import os

    given = os.environ.get("DSV_DOCS_SITE")
    if given:
        return Path(given)
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "dsv-check";
  const links = document.querySelectorAll("nav.md-tabs a, nav.md-nav a.md-nav__link, nav.md-nav label.md-nav__link");
  const nav = [...links].filter(a => a.getClientRects().length).map(a => a.textContent.trim());
  const tables = [...document.querySelectorAll("article table")].length;
  const h1 = (document.querySelector("h1") || {}).textContent;
  out.textContent = JSON.stringify({nav, tables, title: document.title, h1});
  document.body.appendChild(out);
});
</script>"""


def rendered(site: Path, page: str, tmp_path: Path) -> dict:
    """What Chromium shows of a built page at a desktop's width: its visible navigation (tabs and
    side bar), its tables, its title."""
    exe = browser()
    assert exe is not None
    source = site / page
    checked = source.with_name(f"checked-{source.name}")
    checked.write_text(source.read_text().replace("</body>", CHECK + "</body>"))
    try:
        dumped = headless(exe, "--dump-dom", "--window-size=1400,1000", checked.as_uri())
    finally:
        checked.unlink()
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    found = re.search(r'<pre id="dsv-check">(.*?)</pre>', dumped.stdout, re.S)
    assert found is not None, dumped.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(browser() is None, reason="no chromium installed (apt-get install chromium)")
def test_the_built_pages_render_with_their_navigation(site, tmp_path):
    home = rendered(site, "index.html", tmp_path)
    assert "dsv" in home["title"]
    for section in ("Tutorials", "How-to", "Explanation", "Measurements", "Reference"):
        assert section in home["nav"], home["nav"]
    keys = rendered(site, "reference/config/index.html", tmp_path)
    assert keys["h1"].strip().startswith("Pipeline keys")
    assert "Pipeline keys" in keys["nav"] and "Command line" in keys["nav"]
    assert keys["tables"] >= len(CORE_TABLES)


# ---- the front pages -----------------------------------------------------------------------------

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_front_pages_open_with_the_imagenet_grid(page):
    text = (REPO_ROOT / page).read_text()
    pictures = IMAGE.findall(text)
    assert pictures, f"{page} shows no picture"
    first = (REPO_ROOT / page).parent / pictures[0]
    assert first.resolve() == (DOCS / "imagenet_grid.png").resolve(), pictures[0]
    assert first.is_file() and first.stat().st_size < 600_000  # a small PNG
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_is_short_and_starts_with_its_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = BLOCK.search(text)
    assert first_block is not None and first_block.group(1) == "bash"
    commands = [line for line in first_block.group(3).splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("dsv-pipeline run pipelines/imagenet_gen.toml") and commands[1].endswith("tox")


def test_the_report_how_to_shows_a_screenshot_of_the_imagenet_report():
    text = (DOCS / "how-to" / "report.md").read_text()
    shots = [p for p in IMAGE.findall(text) if "report-imagenet" in p]
    assert shots and (DOCS / "how-to" / shots[0]).resolve().is_file()
