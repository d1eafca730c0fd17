"""The HTML report of a run store (``dsv-pipeline report`` and the ``report`` stage), read by a
parser and rendered by a real browser (headless Chromium) where one is installed."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import plugin_module
from PIL import Image
from sklearn.datasets import load_digits

from dsv import cli
from dsv.pipeline import Pipeline
from dsv.plugins import DsvPluginManager
from dsv.store import RunStore
from dsv.store.report import render

ITERATIONS = 12


class Page(html.parser.HTMLParser):
    """The report's images (src), the order of the candidate cards per section, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, write_pipeline):
    """A real digits run through every stage, the report stage last."""
    root = tmp_path_factory.mktemp("report")
    image = root / "three.png"
    Image.fromarray((load_digits().images[3] / 16 * 255).astype(np.uint8)).resize((16, 16)).save(image)
    store = root / "run.zarr"
    path = write_pipeline(
        root / "pipeline.toml",
        name="digits_report",
        stages=("train", "synthesize", "select", "retrain", "evaluate", "analyse", "interpolate", "edit", "report"),
        store=store,
        models=root / "models",
        synthesis={"iterations": ITERATIONS, "lambda_warmup": 3, "checkpoint_every": 5},
        tables={
            "select": {"pool_per_class": 10, "iterations": 10, "top_k": [1, 3]},
            "retrain": {"retrainer": {"name": "adam", "epochs": 2, "batch_size": 32}, "seeds": 1},
            "evaluate": {"model": "convnet", "options": {"width": 8, "depth": 2}},
            "interpolate": {"from_class": 1, "to_class": 7, "steps": 3, "iterations": 4},
            "edit": {"edits": [{"image": image, "target": 8}], "iterations": 4},
        },
    )
    # the verifier: the trained model's cached weights (found after a train-only run)
    train_only = ["--set", 'run.stages=["train"]', "--store", str(root / "train.zarr")]
    assert cli.main(["run", str(path), "--no-progress", *train_only]) == 0
    (weights,) = (root / "models").glob("*.pt")
    text = path.read_text().replace('model = "convnet"', f'model = "convnet"\nweights_path = "{weights.as_posix()}"')
    path.write_text(text)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    return RunStore.open(store)


def card_order(page_html: str, section: str) -> list[int]:
    start = page_html.index(section)
    end = page_html.index("<h2>", start + 1)
    return [int(i) for i in re.findall(r'class="rank">#(\d+)<', page_html[start:end])]


def test_the_report_stage_writes_one_self_contained_page_with_every_part(full_run):
    path = full_run.path / "exports" / "report.html"
    text = path.read_text()
    page = Page(text)
    words = " ".join(page.text)
    assert not {"script", "link", "iframe", "object"} & page.tags
    assert "http://" not in text and "https://" not in text
    for src in page.images:  # every image inline, and a real PNG
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.width > 0 and im.height > 0
    meta = full_run.meta
    for fact in (meta["dsv_version"], meta["config_hash"], meta["model_fingerprint"], meta["created"]):
        assert fact in words
    assert "finished: 12 iterations" in words and "synthesis time" in words
    # 10 candidates, twice (grid, ranked), each with target, lambda, alive and the verifier's top 3
    assert len(re.findall(r'class="card(?: dead)?"', text)) == 20
    top3 = full_run.results["verifier"]["top3"]
    assert len(top3) == 10 and all(len(row) == 3 for row in top3)
    assert f"convnet: {top3[4][0][0]} {top3[4][0][1]:.2f}" in text  # each verifier by its model name
    assert card_order(text, "<h2>Candidates") == list(range(10))
    lambdas = full_run.candidates()["lambda"]
    alive = full_run.candidates()["alive"]
    ranked = card_order(text, "<h2>Ranked by")
    assert sorted(ranked) == list(range(10))
    keys = [(not alive[i], -lambdas[i]) for i in ranked]
    assert keys == sorted(keys)
    # history curves, every stage result, the config
    headings = ["History", "Verifier (convnet)", "Retrained on the candidates", "Coreset selection", "Config"]
    headings += ["Per-class λ against class accuracy", "Interpolation strip", "Edits (before, after)"]
    for heading in headings:
        assert heading in words, heading
    assert "baseline: the base model" in words
    assert "SSIM to the image" in words and "adversarial" in words  # the edit, scored by the verifier
    assert "[synthesis]" in words  # the pipeline file's own text
    # candidates x2, history, rho plot, strip, edits
    assert len(page.images) == 20 + 4


def test_cli_report_writes_where_it_is_told_and_refuses_a_missing_folder(full_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli.main(["report", str(full_run.path), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert cli.main(["report", str(full_run.path), "-o", str(tmp_path / "nowhere" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "report:" in err and "no such folder" in err and "Traceback" not in err
    assert cli.main(["report", str(tmp_path / "not-a-store")]) == 2


def test_a_grouped_unfinished_run_is_reported_as_such(tmp_path, write_pipeline, convnet_weights):
    def dsv_iteration_completed(run, iteration, metrics):
        return iteration >= 4  # stop early: the run is not finished

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(plugin_module("stopper", dsv_iteration_completed=dsv_iteration_completed), "stopper")
    store = tmp_path / "grouped.zarr"
    path = write_pipeline(
        tmp_path / "grouped.toml",
        stages=("synthesize",),
        store=store,
        model_options={"width": 4, "depth": 2},
        synthesis={"iterations": ITERATIONS, "groups": 2, "classes": [0, 1, 2, 3, 4], "lambda_warmup": 2},
        tables={"model": {"weights_path": convnet_weights}},
    )
    Pipeline.from_toml(path, plugins=pm, progress=False).run()
    opened = RunStore.open(store)
    assert opened.group_count == 2
    text = render(opened)
    assert "unfinished run: 4 of 12 iterations committed" in text
    assert len(re.findall(r'class="card(?: dead)?"', text)) == 10
    assert "no stage after synthesis recorded a result" in text
    # a run killed before its first checkpoint: no history yet
    region = RunStore.open(store, mode="a").region(1)
    record = region.record
    record.update(summary={}, history_length=0, committed_iteration=0)
    region.group.attrs[region.record_key] = record
    assert "no history committed yet" in render(RunStore.open(store))


# ---- a real browser ------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHECK = """<script>
const problems = [];
const note = e => problems.push("error: " + (e.message || ((e.target && e.target.src) || "?").slice(0, 60)));
window.addEventListener("error", note, true);
const blocked = e => problems.push("csp: " + e.violatedDirective + " " + e.blockedURI);
document.addEventListener("securitypolicyviolation", blocked);
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40));
  const out = document.createElement("pre");
  out.id = "dsv-check";
  out.textContent = JSON.stringify({images: images.length, broken, problems, height: document.body.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def headless(exe: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]
    return subprocess.run(
        [exe, *flags, "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(browser() is None, reason="no chromium installed (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(full_run, tmp_path):
    exe = browser()
    assert exe is not None
    text = (full_run.path / "exports" / "report.html").read_text()
    # the checker is the page's only script: allow inline scripts in this copy, nothing else
    checked = text.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", CHECK + "</body>")
    page = tmp_path / "report.html"
    page.write_text(checked)
    dumped = headless(exe, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    found = re.search(r'<pre id="dsv-check">(.*?)</pre>', dumped.stdout, re.S)
    assert found is not None, dumped.stdout[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == 24 and result["broken"] == [] and result["problems"] == []
    console = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the report itself logs nothing, and nothing was blocked
    # and a screenshot of the page as it is (no script at all)
    shot = tmp_path / "report.png"
    taken = headless(exe, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", page.as_uri())
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # something was drawn, not a blank page


def test_the_candidate_images_are_the_stored_candidates_in_pixels(full_run):
    c = full_run.candidates()
    text = render(full_run)
    first = Page(text).images[0]
    with Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1]))) as im:
        pixels = np.asarray(im, dtype=np.float32) / 255
    meta = full_run.meta
    expected = np.clip(c["x"][0, 0] * meta["std"][0] + meta["mean"][0], 0, 1)
    assert np.abs(pixels - expected).max() <= 1 / 255 + 1e-6


def test_a_store_of_schema_2_is_reported(full_run, tmp_path):
    from test_distributed import as_schema_2

    old = tmp_path / "old.zarr"
    as_schema_2(full_run.path, old)
    store = RunStore.open(old)
    assert store.schema_version == 2
    text = render(store)
    assert "finished: 12 iterations" in text and "<td>schema version</td><td>2</td>" in text
    assert len(re.findall(r'class="card(?: dead)?"', text)) == 20 and "Verifier (convnet)" in text
