"""The paper's Table 2, in its shape: DSVs against DC, DSA and DM at the same number of real images
seen per class (``shots``), under one retraining protocol (the pipeline's [retrain] table).

Run through ``benchmarks/distill.py --table2`` (it owns the base model, the data and the
retraining). Rows: img/cls in {1, 10} x shots in {0, 1, 10} x {dsv, dc, dsa, dm, random_real};
at 0 shots only DSVs exist (the baselines need real images). What each method sees at ``s`` shots:
the same ``s`` random training images per class (``random_real``'s draw, by the run's seed).

* ``dsv``: the pipeline's [synthesis] table. 0 shots: its own initializer (the paper: images of
  another data set); s shots: candidates start from the s real images of their class, in turn, and
  when s > img/cls the s candidates are synthesized and the img/cls with the largest lambda kept.
* ``dc`` / ``dsa``: gradient matching (dsv.evaluation.gradient_matching) from noise (DC's default
  init) against the s images, at the published loops, ``--gm-iterations`` iterations.
* ``dm``: distribution matching from the s images (cycled; DM's default ``real`` init),
  ``--dm-iterations`` iterations; its loss curve goes into the JSON.
* ``random_real``: min(img/cls, s) of the s images per class.

Then the ablation rows (each one difference from the paper's recipe, on the 1-img 1-shot DSV row)
and the thread check (that row rerun with 1 and with 2 torch threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import torch

from dsv import config as cfg
from dsv.evaluation.baselines import distribution_matching, random_real, synthesize_images
from dsv.evaluation.gradient_matching import gradient_matching
from dsv.kkt.selection import top_lambda_candidates

IMG_PER_CLASS = (1, 10)
SHOTS = (0, 1, 10)
METHODS = ("dsv", "dc", "dsa", "dm", "random_real")
# one difference from the paper's recipe each: [synthesis] overrides, or a retrain / base-model change
ABLATIONS = {
    "eta 1 (paper: 5)": {"synthesis": {"augmented_weight": 1.0}},
    "all augmentations chained (paper: one drawn)": {"synthesis": {"augmentation_sampling": "all"}},
    "Adam on x and lambda (paper: plain steps)": {
        "synthesis": {"optimizer": "adam", "lr_x": 0.05, "lr_lambda": 0.01, "lambda_warmup": 100}
    },
    "retrain lr 1e-3 (paper: 1e-4)": {"retrain_lr": 1e-3},
}
BASE_ABLATION = "base model weight decay 5e-4 (paper: 5e-3)"


class Table2:
    def __init__(self, bench, args):
        self.bench = bench
        self.args = args
        self.rows: list[dict] = []
        self.ablation: list[dict] = []
        self.curves: dict[str, list[float]] = {}
        self.notes: dict[str, dict] = {}
        self.written: Callable[[], None] = lambda: None  # called after every row (partial JSON)

    # ---- the images of each method ------------------------------------------------------------

    def seen(self, shots: int):
        b = self.bench
        return random_real(b.data, b.loaded.spec, shots, b.config.run.seed)

    def dsv(self, ipc: int, shots: int, synthesis: cfg.SynthesisConfig | None = None):
        b = self.bench
        s = synthesis or b.config.synthesis
        pool = max(ipc, shots) if shots else ipc
        s = attrs.evolve(s, candidates_per_class=pool, classes=[], targets=[], checkpoint_every=0, keep_per_class=0)
        if shots:
            s = attrs.evolve(s, init=cfg.PluginSpec(name="real", options={"shots": shots}))
        x, labels, alive, history = synthesize_images(
            b.loaded.module, b.loaded.spec, s, plugins=b.pipeline.plugins, data=b.data, seed=b.config.run.seed
        )
        if pool > ipc:  # the img/cls candidates of each class with the largest lambda
            keep = top_lambda_candidates(torch.from_numpy(history["final_lambda"]), alive, labels, ipc)
            x, labels, alive = x[keep], labels[keep], alive[keep]
        from distill import entropy_notes  # the script beside this module, which imports it

        self.notes[f"dsv_{ipc}_{shots}"] = {
            "alive": int(alive.sum()),
            **entropy_notes(history),
            "relative_stationarity_end": float(history["relative_stationarity"][-1])
            if "relative_stationarity" in history
            else None,
        }
        return x, labels

    def images_of(self, method: str, ipc: int, shots: int):
        b = self.bench
        if method == "dsv":
            return self.dsv(ipc, shots)
        real, real_labels = self.seen(shots)
        labels = torch.arange(b.loaded.spec.num_classes).repeat_interleave(ipc)
        seed = b.config.run.seed
        if method == "random_real":
            keep = torch.cat([(real_labels == c).nonzero().flatten()[:ipc] for c in real_labels.unique().tolist()])
            return real[keep], real_labels[keep]
        if method == "dm":
            start = torch.cat([real[real_labels == c][torch.arange(ipc) % shots] for c in labels.unique().tolist()])
            curve: list[float] = []
            images = distribution_matching(
                b.loaded.module,
                real,
                real_labels,
                start,
                labels,
                iterations=self.args.dm_iterations,
                augmentations=b.augmentations,
                seed=seed,
                history=curve,
            )
            self.curves[f"dm_{ipc}_{shots}"] = curve
            return images, labels
        noise = torch.randn((len(labels), *real.shape[1:]), generator=torch.Generator().manual_seed(seed))
        curve = []
        images = gradient_matching(
            b.loaded.module,
            real,
            real_labels,
            noise,
            labels,
            iterations=self.args.gm_iterations if ipc == 1 else self.args.gm_iterations_10,
            siamese=method == "dsa",
            seed=seed,
            history=curve,
        )
        self.curves[f"{method}_{ipc}_{shots}"] = curve
        return images, labels

    # ---- rows ---------------------------------------------------------------------------------

    def row(self, method: str, ipc: int, shots: int, retrainer=None, **extra) -> dict:
        start = time.perf_counter()
        images, labels = self.images_of(method, ipc, shots) if "images" not in extra else extra.pop("images")
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
        print(f"{'img/cls':>7}{'shots':>6}  {'method':<14}test accuracy (%)")
        for ipc in IMG_PER_CLASS:
            for shots in SHOTS:
                for method in METHODS:
                    if shots == 0 and method != "dsv":
                        continue
                    if part != "all" and worker_of(ipc, shots) != part:
                        continue
                    self.rows.append(self.row(method, ipc, shots))
                    print_row(self.rows[-1])
                    self.written()

    def run_ablations(self, base_bench=None) -> None:
        b = self.bench
        print("ablations (1 img/cls, 1 shot)")
        for label, change in ABLATIONS.items():
            s = attrs.evolve(b.config.synthesis, **change.get("synthesis", {}))
            retrainer = attrs.evolve(b.retrainer, lr=change["retrain_lr"]) if "retrain_lr" in change else None
            images = self.dsv(1, 1, synthesis=s)
            self.ablation.append({**self.row("dsv", 1, 1, retrainer=retrainer, images=images), "label": label})
            print_row(self.ablation[-1], label)
            self.written()
        if base_bench is not None:
            other = Table2(base_bench, self.args)
            row = other.row("dsv", 1, 1)
            row.update(label=BASE_ABLATION, base_model=base_bench.pipeline.context.facts.get("base_model"))
            self.ablation.append(row)
            print_row(row, BASE_ABLATION)

    def thread_check(self) -> dict:
        """The 1-img 1-shot DSV row with 1 and with 2 torch threads (synthesis and retraining)."""
        out = {}
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                row = self.row("dsv", 1, 1)
                out[str(threads)] = {"dsv_1_1": row["mean"], "std": row["std"]}
                print(f"threads {threads}: dsv 1 img/cls 1 shot {100 * row['mean']:.2f} ± {100 * row['std']:.2f}")
        finally:
            torch.set_num_threads(before)
        return out


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
        if "dsv" not in cell:
            continue
        rivals = [cell[m] for m in ("dc", "dsa", "dm") if m in cell]
        if not rivals:
            continue
        best = max(rivals, key=lambda r: r["mean"])
        margin = cell["dsv"]["mean"] - best["mean"]
        out[f"{ipc}_{shots}"] = {
            "dsv": cell["dsv"]["mean"],
            "best_baseline": best["method"],
            "best_mean": best["mean"],
            "margin": margin,
            "larger_std": max(cell["dsv"]["std"], best["std"]),
            "met": bool(margin > max(cell["dsv"]["std"], best["std"])),
        }
    return out


def print_row(r: dict, label: str = "") -> None:
    print(
        f"{r['img_per_class']:>7}{r['shots']:>6}  {r['method']:<14}{100 * r['mean']:6.2f} ± {100 * r['std']:5.2f}"
        f"  ({r['seeds']} seeds, {r['seconds_total']:.0f} s){'  ' + label if label else ''}",
        flush=True,
    )


def pct(r: dict) -> str:
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"


def markdown(result: dict) -> str:
    """The Table 2 JSON as Markdown: the table (methods as columns), the claims, the coresets and
    rho, the ablations and the thread check."""
    out = ["| img/cls | shots | " + " | ".join(METHODS) + " |", "| --- | --- |" + " --- |" * len(METHODS)]
    cells = {(r["img_per_class"], r["shots"], r["method"]): r for r in result["table2"]}
    for ipc in IMG_PER_CLASS:
        for shots in SHOTS:
            row = [pct(cells[ipc, shots, m]) if (ipc, shots, m) in cells else "-" for m in METHODS]
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
            out.append(
                f"| {method} | "
                + " | ".join(pct(core[method, k]) if (method, k) in core else "-" for k in (1, 10))
                + " |"
            )
        if result.get("rho") is not None:
            out.append(f"\nrho (class lambda sum vs class test accuracy): {result['rho']:+.3f}")
    if result.get("ablation"):
        out += ["", "| ablation (1 img/cls, 1 shot) | dsv |", "| --- | --- |"]
        out += [f"| {r['label']} | {pct(r)} |" for r in result["ablation"]]
    if result.get("threads"):
        t = result["threads"]
        out += ["", "| threads | dsv, 1 img/cls, 1 shot |", "| --- | --- |"]
        out += [f"| {k} | {100 * v['dsv_1_1']:.2f} ± {100 * v['std']:.2f} |" for k, v in sorted(t.items())]
    return "\n".join(out)


def main() -> None:
    """With a JSON of ``--table2``: print it as Markdown. On its own: list the rows and the
    ablations that ``benchmarks/distill.py --table2`` runs."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(
        description="the paper's Table 2; run it as: python benchmarks/distill.py --pipeline "
        "pipelines/paper_fashion_mnist.toml --table2 --json out.json"
    )
    parser.add_argument("json", nargs="?", help="a --table2 JSON: print it as Markdown tables")
    args = parser.parse_args()
    if args.json:
        print(markdown(json.loads(Path(args.json).read_text())))
        return
    print(f"img/cls {list(IMG_PER_CLASS)} x shots {list(SHOTS)} x {', '.join(METHODS)} (0 shots: dsv only)")
    print("ablations of the 1-img 1-shot DSV row:")
    for label in [*ABLATIONS, BASE_ABLATION]:
        print(f"  {label}")


if __name__ == "__main__":
    main()
