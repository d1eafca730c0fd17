"""The paper's Table 2, in its shape: DSVs against DC, DSA and DM at the same number of real images
seen per class (``shots``), under one retraining protocol (the pipeline's [retrain] table), on a
:class:`~dsv.bench.distill.DistillBench` (its base model, data and retraining).

Rows: img/cls in {1, 10} x shots in {0, 1, 10} x {dsv, dc, dsa, dm, random_real}; at 0 shots only
DSVs exist (the baselines need real images). What each method sees at ``s`` shots: the same ``s``
random training images per class (``random_real``'s draw, by the run's seed).

* ``dsv``: the pipeline's [synthesis] table. 0 shots: its own initializer (the paper: images of
  another data set); s shots: candidates start from the s real images of their class, in turn, and
  when s > img/cls the s candidates are synthesized and the img/cls with the largest lambda kept.
* ``dc`` / ``dsa``: gradient matching (dsv.evaluation.gradient_matching) from noise (DC's default
  init) against the s images, at the published loops, ``gm_iterations`` iterations.
* ``dm``: distribution matching from the s images (cycled; DM's default ``real`` init),
  ``dm_iterations`` iterations; its loss curve goes into the JSON.
* ``random_real``: min(img/cls, s) of the s images per class.

Then the ablation rows (each one difference from the paper's recipe, on the 1-img 1-shot DSV row)
and the thread check (that row rerun with 1 and with 2 torch threads). :func:`run_table2` runs it
all, in one or two processes, and writes one JSON; :func:`markdown` prints that JSON.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import torch
from torch import Tensor

from dsv import config as cfg
from dsv.bench.distill import CORESET_METHODS, DistillBench, entropy_notes
from dsv.evaluation.baselines import distribution_matching, random_real
from dsv.evaluation.gradient_matching import gradient_matching

IMG_PER_CLASS = (1, 10)
SHOTS = (0, 1, 10)
METHODS = ("dsv", "dc", "dsa", "dm", "random_real")
# one difference from the paper's recipe each: [synthesis] overrides, or a retrain / base-model change
ABLATIONS: dict[str, dict] = {
    "eta 1 (paper: 5)": {"synthesis": {"augmented_weight": 1.0}},
    "all augmentations chained (paper: one drawn)": {"synthesis": {"augmentation_sampling": "all"}},
    "Adam on x and lambda (paper: plain steps)": {
        "synthesis": {"optimizer": "adam", "lr_x": 0.05, "lr_lambda": 0.01, "lambda_warmup": 100}
    },
    "retrain lr 1e-3 (paper: 1e-4)": {"retrain_lr": 1e-3},
}
BASE_ABLATION = "base model weight decay 5e-4 (paper: 5e-3)"
BASE_ABLATION_OVERRIDE = "train.retrainer.weight_decay=5e-4"
HEADER = f"{'img/cls':>7}{'shots':>6}  {'method':<14}test accuracy (%)"


class Table2:
    """The rows of Table 2, the ablations and the thread check on one bench."""

    def __init__(self, bench: DistillBench):
        self.bench = bench
        self.rows: list[dict] = []
        self.ablation: list[dict] = []
        self.curves: dict[str, list[float]] = {}
        self.notes: dict[str, dict] = {}
        self.written: Callable[[], None] = lambda: None  # called after every row (partial JSON)

    # ---- the images of each method ------------------------------------------------------------

    def seen(self, shots: int) -> tuple[Tensor, Tensor]:
        b = self.bench
        return random_real(b.data, b.loaded.spec, shots, b.seed)

    def dsv(self, ipc: int, shots: int, synthesis: cfg.SynthesisConfig | None = None) -> tuple[Tensor, Tensor]:
        b = self.bench
        s = synthesis or b.config.synthesis
        pool = max(ipc, shots) if shots else ipc
        s = attrs.evolve(s, candidates_per_class=pool, classes=[], targets=[], checkpoint_every=0, keep_per_class=0)
        if shots:
            s = attrs.evolve(s, init=cfg.PluginSpec(name="real", options={"shots": shots}))
        # the img/cls candidates of each class with the largest lambda
        x, labels, alive, history = b.synthesize(s, keep_per_class=ipc if pool > ipc else 0)
        stationarity = history.get("relative_stationarity")
        self.notes[f"dsv_{ipc}_{shots}"] = {
            "alive": int(alive.sum()),
            **entropy_notes(history),
            "relative_stationarity_end": float(stationarity[-1]) if stationarity is not None else None,
        }
        return x, labels

    def images_of(self, method: str, ipc: int, shots: int) -> tuple[Tensor, Tensor]:
        b = self.bench
        if method == "dsv":
            return self.dsv(ipc, shots)
        real, real_labels = self.seen(shots)
        labels = torch.arange(b.loaded.spec.num_classes).repeat_interleave(ipc)
        if method == "random_real":
            keep = torch.cat([(real_labels == c).nonzero().flatten()[:ipc] for c in real_labels.unique().tolist()])
            return real[keep], real_labels[keep]
        curve: list[float] = []
        self.curves[f"{method}_{ipc}_{shots}"] = curve
        if method == "dm":
            start = torch.cat([real[real_labels == c][torch.arange(ipc) % shots] for c in labels.unique().tolist()])
            iterations = b.options.dm_iterations
            images = distribution_matching(
                b.loaded.module,
                real,
                real_labels,
                start,
                labels,
                iterations=iterations,
                augmentations=b.augmentations,
                seed=b.seed,
                history=curve,
            )
            return images, labels
        noise = torch.randn((len(labels), *real.shape[1:]), generator=torch.Generator().manual_seed(b.seed))
        iterations = b.options.gm_iterations if ipc == 1 else b.options.gm_iterations_10
        images = gradient_matching(
            b.loaded.module,
            real,
            real_labels,
            noise,
            labels,
            iterations=iterations,
            siamese=method == "dsa",
            seed=b.seed,
            history=curve,
        )
        return images, labels

    # ---- rows ---------------------------------------------------------------------------------

    def row(self, method: str, ipc: int, shots: int, retrainer=None, images=None, **extra) -> dict:
        start = time.perf_counter()
        images, labels = self.images_of(method, ipc, shots) if images is None else images
        made = time.perf_counter() - start
        cell = self.bench.score(images, labels, "hard", retrainer=retrainer)
        return {
            "img_per_class": ipc,
            "shots": shots,
            "method": method,
            **cell,
            "seconds_make": made,
            "seconds_total": time.perf_counter() - start,
            **extra,
        }

    def run(self, part: str = "all") -> None:
        """The rows of ``part``: all, or those of the first or the second worker (:func:`worker_of`)."""
        print(HEADER)
        for ipc, shots, method in cells():
            if part != "all" and worker_of(ipc, shots) != part:
                continue
            self.rows.append(self.row(method, ipc, shots))
            print(format_row(self.rows[-1]), flush=True)
            self.written()

    def run_ablations(self, base_bench: DistillBench | None = None) -> None:
        b = self.bench
        print("ablations (1 img/cls, 1 shot)")
        for label, change in ABLATIONS.items():
            s = attrs.evolve(b.config.synthesis, **change.get("synthesis", {}))
            retrainer = attrs.evolve(b.retrainer, lr=change["retrain_lr"]) if "retrain_lr" in change else None
            images = self.dsv(1, 1, synthesis=s)
            self.ablation.append({**self.row("dsv", 1, 1, retrainer=retrainer, images=images), "label": label})
            print(format_row(self.ablation[-1], label), flush=True)
            self.written()
        if base_bench is not None:
            row = Table2(base_bench).row("dsv", 1, 1)
            row.update(label=BASE_ABLATION, base_model=base_bench.pipeline.context.facts.get("base_model"))
            self.ablation.append(row)
            print(format_row(row, BASE_ABLATION), flush=True)

    def thread_check(self) -> dict:
        """The 1-img 1-shot DSV row with 1 and with 2 torch threads (synthesis and retraining)."""
        out = {}
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                row = self.row("dsv", 1, 1)
                out[str(threads)] = {"dsv_1_1": row["mean"], "std": row["std"]}
                print(f"threads {threads}: dsv 1 img/cls 1 shot {pct(row)}")
        finally:
            torch.set_num_threads(before)
        return out


def cells() -> list[tuple[int, int, str]]:
    """(img/cls, shots, method) of every row, in the table's order; at 0 shots DSVs only."""
    return [(i, s, m) for i in IMG_PER_CLASS for s in SHOTS for m in METHODS if s or m == "dsv"]


def worker_of(ipc: int, shots: int) -> str:
    """Which of two workers makes a row: "second" the rows of 10 img/cls (the costly DC/DSA loops
    and retraining on 100 images), "main" the rest, the coresets, the ablations and the thread
    check; on 2 cores the two take about the same time."""
    return "second" if ipc == 10 else "main"


def ordered(rows: list[dict]) -> list[dict]:
    """Rows in the table's order (img/cls, shots, method), whichever worker made them."""
    return sorted(rows, key=lambda r: (r["img_per_class"], r["shots"], METHODS.index(r["method"])))


def claims(rows: list[dict]) -> dict:
    """The paper's claim shape: DSVs above the best of DC/DSA/DM at 1 img/cls 1 shot and at 10
    img/cls 10 shots, by more than the larger std."""
    out = {}
    for ipc, shots in ((1, 1), (10, 10)):
        cell = {r["method"]: r for r in rows if r["img_per_class"] == ipc and r["shots"] == shots}
        rivals = [cell[m] for m in ("dc", "dsa", "dm") if m in cell]
        if "dsv" not in cell or not rivals:
            continue
        best = max(rivals, key=lambda r: r["mean"])
        margin = cell["dsv"]["mean"] - best["mean"]
        larger_std = max(cell["dsv"]["std"], best["std"])
        out[f"{ipc}_{shots}"] = {
            "dsv": cell["dsv"]["mean"],
            "best_baseline": best["method"],
            "best_mean": best["mean"],
            "margin": margin,
            "larger_std": larger_std,
            "met": bool(margin > larger_std),
        }
    return out


def pct(r: dict) -> str:
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"


def format_row(r: dict, label: str = "") -> str:
    return (
        f"{r['img_per_class']:>7}{r['shots']:>6}  {r['method']:<14}{100 * r['mean']:6.2f} ± {100 * r['std']:5.2f}"
        f"  ({r['seeds']} seeds, {r['seconds_total']:.0f} s){'  ' + label if label else ''}"
    )


def format_claim(key: str, c: dict) -> str:
    return (
        f"claim {key.replace('_', ' img/cls, ')} shots: dsv {100 * c['dsv']:.2f} vs {c['best_baseline']} "
        f"{100 * c['best_mean']:.2f} (margin {100 * c['margin']:+.2f}, larger std {100 * c['larger_std']:.2f}): "
        f"{'met' if c['met'] else 'not met'}"
    )


def plan() -> list[str]:
    """The rows and the ablations that :func:`run_table2` runs, as lines."""
    head = f"img/cls {list(IMG_PER_CLASS)} x shots {list(SHOTS)} x {', '.join(METHODS)} (0 shots: dsv only)"
    return [head, "ablations of the 1-img 1-shot DSV row:", *(f"  {label}" for label in [*ABLATIONS, BASE_ABLATION])]


def markdown(result: dict) -> str:
    """The Table 2 JSON as Markdown: the table (methods as columns), the claims, the coresets and
    rho, the ablations and the thread check."""
    out = ["| img/cls | shots | " + " | ".join(METHODS) + " |", "| --- | --- |" + " --- |" * len(METHODS)]
    cells_ = {(r["img_per_class"], r["shots"], r["method"]): r for r in result["table2"]}
    for ipc in IMG_PER_CLASS:
        for shots in SHOTS:
            row = [pct(cells_[ipc, shots, m]) if (ipc, shots, m) in cells_ else "-" for m in METHODS]
            if any(v != "-" for v in row):
                out.append(f"| {ipc} | {shots} | " + " | ".join(row) + " |")
    out += [
        "",
        "| claim | dsv | best of DC/DSA/DM | margin | larger std | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, c in result.get("claims", {}).items():
        ipc, shots = key.split("_")
        out.append(
            f"| {ipc} img/cls, {shots} shots | {100 * c['dsv']:.2f} | {c['best_baseline']} {100 * c['best_mean']:.2f} "
            f"| {100 * c['margin']:+.2f} | {100 * c['larger_std']:.2f} | {'yes' if c['met'] else 'no'} |"
        )
    if result.get("coreset"):
        out += ["", "| coreset | 1/cls | 10/cls |", "| --- | --- | --- |"]
        core = {(r["method"], r["img_per_class"]): r for r in result["coreset"]}
        for method in dict.fromkeys(r["method"] for r in result["coreset"]):
            shown = [pct(core[method, k]) if (method, k) in core else "-" for k in (1, 10)]
            out.append(f"| {method} | " + " | ".join(shown) + " |")
        if result.get("rho") is not None:
            out.append(f"\nrho (class lambda sum vs class test accuracy): {result['rho']:+.3f}")
    if result.get("ablation"):
        out += ["", "| ablation (1 img/cls, 1 shot) | dsv |", "| --- | --- |"]
        out += [f"| {r['label']} | {pct(r)} |" for r in result["ablation"]]
    if result.get("threads"):
        out += ["", "| threads | dsv, 1 img/cls, 1 shot |", "| --- | --- |"]
        threads = sorted(result["threads"].items())
        out += [f"| {k} | {100 * v['dsv_1_1']:.2f} ± {100 * v['std']:.2f} |" for k, v in threads]
    return "\n".join(out)


# ---- the whole run, in one or two processes -------------------------------------------------------


@attrs.define(kw_only=True)
class Table2Run:
    """How :func:`run_table2` runs: ``part`` of the rows ("all", or a worker's "main" / "second");
    ``workers`` 2 with part "all": the "second" rows in a child process, started by
    ``second_command(json_path)`` (the command line that writes that part's JSON there)."""

    json: str = ""
    part: str = "all"
    workers: int = 2
    threads: int = 1
    ablations: bool = True
    base_ablation: bool = True
    second_command: Callable[[Path], list[str]] | None = None
    start: float = attrs.field(factory=time.perf_counter)  # the JSON's seconds count from here


def result_json(bench: DistillBench, table: Table2, threads: dict, run: Table2Run, seconds: float, partial: bool):
    """The Table 2 JSON of what is done so far."""
    zero = table.notes.get("dsv_1_0", {})
    options = bench.options
    return {
        "table2": ordered(table.rows),
        "coreset": bench.coreset,
        "rho": bench.notes.get("select", {}).get("pearson_lambda_accuracy"),
        "entropy": {"after_50": zero.get("entropy_after_50"), "end": zero.get("entropy_end")},
        "base_model": bench.pipeline.context.facts.get("base_model"),
        "threads": threads,
        "ablation": table.ablation,
        "claims": claims(table.rows),
        "curves": table.curves,
        "notes": {**bench.notes, **table.notes},
        "settings": {
            "pipeline": options.pipeline,
            "overrides": options.overrides,
            "quick": options.quick,
            "gm_iterations": options.gm_iterations,
            "gm_iterations_10": options.gm_iterations_10,
            "dm_iterations": options.dm_iterations,
            "threads": run.threads,
            "workers": run.workers,
            "part": run.part,
        },
        "seconds": seconds,
        "partial": partial,
    }


def run_table2(bench: DistillBench, run: Table2Run) -> Table2:
    """The paper's comparison, the coresets and rho with the pipeline's lambda fit, the ablation
    rows, the thread check; one JSON at ``run.json``, rewritten after every row (a killed run keeps
    what it finished). With two workers the rows of :func:`worker_of`'s "second" part run in a
    child process of one thread (its JSON merged at the end), the rest here with one thread."""
    start = run.start
    table = Table2(bench)
    threads: dict = {}
    part, child, child_json = run.part, None, None
    if run.workers > 1 and part == "all" and run.second_command is not None:
        out_dir = Path(run.json).parent if run.json else Path(tempfile.mkdtemp(prefix="table2-"))
        child_json = out_dir / f"{Path(run.json).stem if run.json else 'table2'}.second.json"
        child_json.unlink(missing_ok=True)
        child = subprocess.Popen(run.second_command(child_json))  # the base model is cached by now
        part = "main"
        torch.set_num_threads(1)

    def write(partial: bool) -> None:
        if run.json:
            out = result_json(bench, table, threads, run, time.perf_counter() - start, partial)
            tmp = Path(run.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=2))
            tmp.replace(run.json)

    table.written = lambda: write(True)
    table.run(part)
    if part != "second":
        print("coreset selection")
        bench.coresets([1, 10], list(CORESET_METHODS))
        write(True)
        if run.ablations:
            base_bench = None
            if run.base_ablation:
                overrides = [*bench.given.overrides, BASE_ABLATION_OVERRIDE]
                base_bench = DistillBench(attrs.evolve(bench.given, overrides=overrides))
            table.run_ablations(base_bench)
        threads.update(table.thread_check())
    if child is not None and child_json is not None:
        if child.wait() != 0:
            raise SystemExit(f"the second worker failed (exit {child.returncode}); its rows so far: {child_json}")
        second = json.loads(child_json.read_text())
        table.rows.extend(second["table2"])
        table.curves.update(second["curves"])
        table.notes.update({k: v for k, v in second["notes"].items() if k.startswith("dsv_")})
        if run.json:
            child_json.unlink()
    if part == "all" or child is not None:
        print(HEADER)
        for row in ordered(table.rows):
            print(format_row(row), flush=True)
    for key, c in claims(table.rows).items():
        print(format_claim(key, c))
    print(f"total {time.perf_counter() - start:.0f} s")
    write(False)
    return table
