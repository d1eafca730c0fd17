"""What a person sees at the console: ``dsv-pipeline run`` ends with a few lines (what ran, the
candidates, what the verifiers said, the time, where the grid, report and store are), ``--json``
prints the whole result as one JSON document, no library log line reaches the console without
``--verbose``, progress in a log is a line every few percent (no carriage returns), and the grid's
titles never reach into the row above."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsv import cli
from dsv.pipeline.ending import MAX_LINES, duration, ending_lines
from dsv.plugins.output import LogProgress
from dsv.store.export import grid_figure, pyplot, verifier_lines

SYNTHESIS = {"classes": [0, 1, 2, 3, 4, 5, 6], "iterations": 20, "lambda_warmup": 3, "checkpoint_every": 10}


@pytest.fixture
def pipeline(tmp_path, write_pipeline, convnet_weights):
    """synthesize -> evaluate -> export -> report on digits, without a train stage (whose quiet
    trainer would hide ignite's engine lines for the whole process)."""
    return write_pipeline(
        tmp_path / "console.toml",
        name="console",
        stages=("synthesize", "evaluate", "export", "report"),
        store=tmp_path / "console.zarr",
        model_options={"width": 4, "depth": 2},
        synthesis=SYNTHESIS,
        tables={
            "model": {"weights_path": convnet_weights},
            "evaluate": {"model": "convnet", "weights_path": convnet_weights, "options": {"width": 4, "depth": 2}},
            "export": {"png": "grid.png"},
        },
    )


def test_run_ends_with_a_short_summary_naming_the_grid(pipeline, tmp_path, capsys):
    assert cli.main(["run", str(pipeline), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert 5 <= len(out) <= MAX_LINES, out
    assert out[0].startswith("console: synthesize, evaluate, export, report of ") and " done in " in out[0]
    assert re.match(r"candidates: 7, alive \d, on target \d \(the model's top-1\), after 20 iterations", out[1]), out
    assert any(re.match(r"convnet says: top-1 \d\.\d\d, top-5 \d\.\d\d, mean p\(target\) ", line) for line in out)
    grid = tmp_path / "console.zarr" / "exports" / "grid.png"
    assert f"grid:   {grid}" in out and grid.is_file()
    assert f"report: {tmp_path / 'console.zarr' / 'exports' / 'report.html'}" in out
    assert out[-1].startswith(f"store:  {tmp_path / 'console.zarr'}")


def test_run_json_is_one_document_with_the_whole_summary(pipeline, tmp_path, capsys):
    assert cli.main(["run", str(pipeline), "--no-progress", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["store"] == str(tmp_path / "console.zarr")
    assert whole["seconds"] > 0 and len(whole["exports"]) == 2
    summary = whole["summary"]
    assert summary["candidates"] == 7 and summary["iterations"] == 20
    assert len(summary["verifiers"]["convnet"]["top3"]) == 7  # the per-candidate detail is all there


def test_resume_of_a_finished_run_ends_the_same_way(pipeline, tmp_path, capsys):
    assert cli.main(["run", str(pipeline), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["resume", str(tmp_path / "console.zarr"), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) <= MAX_LINES and out[0].startswith("console: ") and "(stored config)" in out[0]


def test_the_ending_never_passes_its_line_limit():
    many = {f"verifier-{i}": {"top1": 0.5, "top5": 1.0, "p_target": 0.4, "n": 10} for i in range(9)}
    summary = {
        "candidates": 10,
        "alive": 9,
        "classified_as_target": 8,
        "iterations": 300,
        "base_model": {"test_accuracy": 0.91},
        "verifiers": many,
        "retrained": {"mean": 0.5, "std": 0.01, "accuracies": [0.49, 0.51], "images": 10},
    }
    exports = [
        Path(f"s.zarr/exports/{name}") for name in ("grid.png", "strip.png", "edit.png", "a.npz", "b.npz", "r.html")
    ]
    lines = ending_lines(summary, store=Path("s.zarr"), exports=exports, seconds=205.0, name="x", stages=["synthesize"])
    assert len(lines) <= MAX_LINES
    assert "and 5 more verifiers (dsv-pipeline show --json)" in lines
    assert "grid:   s.zarr/exports/grid.png" in lines and "image:  s.zarr/exports/strip.png" in lines
    assert "and 2 more files in s.zarr/exports" in lines
    assert lines[-1].startswith("store:  s.zarr")
    assert lines[0] == "x: synthesize, done in 3 min 25 s"
    assert "base model: test accuracy 0.910" in lines
    assert "retrained on 10 images: test accuracy 0.500 ± 0.010 over 2 seeds" in lines


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (0.84, 42.4, 205.0, 3725.0)] == ["0.8 s", "42 s", "3 min 25 s", "1 h 02 min"]


def test_progress_in_a_log_is_a_line_every_ten_percent(capsys):
    import sys as _sys

    log = LogProgress("synthesize", 300, stream=_sys.stdout)
    for done in range(1, 301):
        log.update(done, {"total": 1.5})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[0].startswith("synthesize: 30/300 (10%) in ") and lines[0].endswith(", total=1.5")
    assert lines[-1].startswith("synthesize: 300/300 (100%)")
    resumed = LogProgress("synthesize", 300, start=150, stream=_sys.stdout)
    for done in range(151, 301):
        resumed.update(done)
    assert [line.split(" in ")[0] for line in capsys.readouterr().out.splitlines()][0] == "synthesize: 180/300 (60%)"


class _Source:
    """An export source of ``n`` candidates (3 x 128 x 128) with two verifiers' top-3."""

    def __init__(self, n: int):
        rng = np.random.default_rng(0)
        targets = np.eye(5, dtype=np.float32)[np.arange(n) % 5]
        self.meta = {"name": "grid", "mean": [0.5] * 3, "std": [0.25] * 3, "classes": [f"class {i}" for i in range(5)]}
        self._c = {
            "x": rng.normal(size=(n, 3, 128, 128)).astype(np.float32),
            "lambda": np.full(n, 0.01, np.float32),
            "alive": np.ones(n, bool),
            "targets": targets,
            "labels": targets.argmax(1),
        }
        guess = lambda i, right: [[f"class {i % 5 if right else (i + 1) % 5}", 0.9], ["class 4", 0.05], ["x", 0.01]]
        self.results = {
            "verifiers": {
                "efficientnet-lite1": {"top3": [guess(i, True) for i in range(n)]},
                "efficientnet-lite2": {"top3": [guess(i, i % 2 == 0) for i in range(n)]},
            }
        }

    def candidates(self):
        return self._c


def test_grid_titles_say_what_each_verifier_named():
    source = _Source(4)
    assert verifier_lines(source, 1) == ["✓ efficientnet-lite1: class 1 0.90", "✗ efficientnet-lite2: class 2 0.90"]


@pytest.mark.parametrize("n", [1, 5, 6, 12, 23])
def test_grid_titles_never_overlap_an_image(n):
    plt = pyplot()
    fig = grid_figure(_Source(n))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        shown = [ax for ax in fig.axes if ax.images]
        assert len(shown) == n
        images = [ax.get_window_extent(renderer) for ax in shown]
        titles = [ax.title.get_window_extent(renderer) for ax in shown]
        for i, title in enumerate(titles):
            for j, image in enumerate(images):
                assert not title.overlaps(image), f"title of cell {i} overlaps image {j} ({n} cells)"
        suptitle = fig._suptitle.get_window_extent(renderer)
        assert not any(suptitle.overlaps(box) for box in images + titles)
        assert all(0 <= box.y0 and box.y1 <= fig.bbox.height + 0.5 for box in titles)  # inside the figure
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_the_console_of_a_real_run_is_short_and_quiet(pipeline, tmp_path):
    """As a user sees it, in a subprocess whose output is a log (not a terminal): progress lines,
    no carriage return, no ignite engine line, at most 15 lines on stdout, naming the grid; with
    --verbose the library lines come back."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "DSV_FAULT"):
        env.pop(name, None)

    def run(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "dsv.cli", "run", str(pipeline), "--fresh", *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    done = run()
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip().splitlines()
    assert len(out) <= MAX_LINES, done.stdout
    assert any(line == f"grid:   {tmp_path / 'console.zarr' / 'exports' / 'grid.png'}" for line in out)
    assert "\r" not in done.stderr and "Engine run" not in done.stderr + done.stdout, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("synthesize: ")]
    assert len(progress) == 10 and progress[-1].startswith("synthesize: 20/20 (100%)"), done.stderr
    assert not [line for line in done.stderr.splitlines() if line and not line.startswith("synthesize: ")]

    as_json = run("--json", "--no-progress")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["summary"]["candidates"] == 7
    assert as_json.stderr == ""

    verbose = run("--verbose", "--no-progress")
    assert verbose.returncode == 0 and "Engine run starting with max_epochs=1." in verbose.stderr
