"""Few-shot / zero-shot distillation and coreset selection, side by side with the baselines.

Every method yields a small labelled image set; fresh models are trained on it under one
protocol (the [retrain] table of the pipeline: same model, retrainer, augmentations, seeds) and
tested on the whole test split. Rows for each images-per-class count:

* ``random_real``: n real images per class;       ``dm``: distribution matching from noise to them;
* ``primal_only``: model inversion from noise (primal loss + priors, no stationarity);
* ``dsv_defaults``: the [synthesis] defaults (those of ``dsv.synthesize`` given the input domain),
  not the pipeline's table;
* ``dsv_noise``, ``dsv_other_data`` (init: sklearn digits, upscaled; no image of the data set is
  seen), ``dsv_real_init`` (init: the n real images of random_real);
* the noise floor: ``noise_gaussian`` (N(0, 1) in model input units, i.e. the data's per-channel
  mean and std, clamped to the input domain) and ``noise_uniform`` (uniform over the domain). A
  DSV row that does not beat the better of them under its protocol is flagged.

Protocols (``--protocols``, each row is scored under every one, same seeds): ``hard`` (the
[retrain] table's retrainer on the hard labels) and ``teacher`` (the ``teacher`` retrainer with
the same epochs, batch size and learning rate: students learn the base model's softmax on each
noised, augmented batch); ``teacher_mixup`` (not run unless asked) is ``teacher`` with each
batch input mixed with another, ``Beta(--mixup, --mixup)`` (the teacher labels the mixtures).

and coresets of real images: ``random``, ``herding``, ``lambda_top`` (the select stage's ranking).

    python benchmarks/distill.py --dataset fashion-mnist --json out.json [--quick] [--set KEY=VALUE ...]

``--set`` overrides keys of pipelines/fashion_mnist_distill.toml (e.g. synthesis.iterations=300);
``--methods`` and ``--ipc`` restrict the table (for ablations).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv import kkt
from dsv.builtin.retrainers import TeacherLabelled
from dsv.evaluation.analysis import class_lambda_sums, pearson
from dsv.evaluation.baselines import distribution_matching, herding, random_per_class, random_real, synthesize_images
from dsv.evaluation.retraining import accuracy_on, build_augmentations, build_retrainer, mean_std, retrain_models
from dsv.kkt.selection import head_features, pool_indices, top_lambda_candidates, top_per_class
from dsv.pipeline import Pipeline, load_pipeline
from dsv.plugins import normalize
from dsv.stages.retrain import RetrainConfig
from dsv.stages.select import SelectConfig, fit_lambdas

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "fashion_mnist_distill.toml"
DISTILL_METHODS = (
    "noise_gaussian",
    "noise_uniform",
    "random_real",
    "dm",
    "primal_only",
    "dsv_noise",
    "dsv_other_data",
    "dsv_real_init",
    "dsv_defaults",
)
NOISE_FLOOR = ("noise_gaussian", "noise_uniform")
PROTOCOLS = ("hard", "teacher", "teacher_mixup")
CORESET_METHODS = ("random", "herding", "lambda_top")
ZERO_SHOT = ("primal_only", "dsv_noise", "dsv_other_data", "dsv_defaults")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist", help="data set name ([data].name); cifar10 needs --data-root")
    p.add_argument("--data-root", default="")
    p.add_argument("--pipeline", default=str(PIPELINE))
    p.add_argument("--json", default="", help="write the table as JSON here")
    p.add_argument("--quick", action="store_true", help="a fifth of the synthesis and retrain steps")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class")
    p.add_argument("--methods", nargs="+", default=[*DISTILL_METHODS, *CORESET_METHODS])
    p.add_argument("--dm-iterations", type=int, default=500)
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS[:2]), choices=PROTOCOLS)
    p.add_argument("--mixup", type=float, default=1.0, help="Beta(a, a) of the teacher_mixup protocol")
    p.add_argument("--teacher-noise", type=float, default=0.1, help="the teacher protocol's batch noise (model units)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--pool", type=int, default=1, help="candidate pools: synthesize pool x ipc per class, keep the top-lambda ipc"
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="[METHOD+]LABEL:KEY=VALUE[;KEY=VALUE...]",
        help="an extra row 'METHOD+LABEL' (default METHOD: dsv_noise) whose [synthesis] gets these overrides "
        "(e.g. 'margin:synthesis.lr_x=0.1'; for dsv_defaults, the defaults with these keys changed); "
        "ablations side by side in one run",
    )
    p.add_argument(
        "--table2",
        action="store_true",
        help="the paper's Table 2 (img/cls x shots x dsv, dc, dsa, dm, random_real), coresets, ablations, threads",
    )
    p.add_argument(
        "--gm-iterations", type=int, default=200, help="DC and DSA iterations at 1 img/cls (published: 1000)"
    )
    p.add_argument(
        "--gm-iterations-10",
        type=int,
        default=2,
        help="DC and DSA iterations at 10 img/cls (published: 1000; each costs about 300 of the 1-img/cls ones)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        choices=(1, 2),
        help="--table2 in two processes of one thread each (the rows of 10 img/cls in the second); "
        "1: one process of --threads threads",
    )
    p.add_argument("--table2-part", default="all", choices=("all", "main", "second"), help=argparse.SUPPRESS)
    p.add_argument("--no-ablations", action="store_true", help="--table2 without the ablation rows")
    p.add_argument("--no-base-ablation", action="store_true", help="--table2 without the second base model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def synthesis_for(s: cfg.SynthesisConfig, method: str, ipc: int) -> cfg.SynthesisConfig:
    """The pipeline's [synthesis] table with the initializer and losses of ``method``."""
    if method == "dsv_defaults":  # what dsv.synthesize does when given only the model's input domain
        return attrs.evolve(s, candidates_per_class=ipc, classes=[], targets=[], checkpoint_every=0)
    s = attrs.evolve(s, candidates_per_class=ipc, classes=[], targets=[], checkpoint_every=0)
    noise = s.init if s.init.name == "noise" else cfg.PluginSpec(name="noise")  # keeps the file's std
    if method == "primal_only":
        return attrs.evolve(s, losses=[term for term in s.losses if term.name == "primal"], init=noise)
    init = {
        "dsv_noise": noise,
        "dsv_other_data": cfg.PluginSpec(name="other", options={"dataset": "digits"}),
        "dsv_real_init": cfg.PluginSpec(name="real"),
    }[method]
    return attrs.evolve(s, init=init)


def quick_schedule(resolutions: list[list[int]]) -> list[list[int]]:
    """A resolution schedule for a fifth of the iterations: each stage starts at a fifth of its
    iteration (still after the stage before it)."""
    out: list[list[int]] = []
    for start, size in resolutions:
        if start > 1:
            start = max(start // 5, out[-1][0] + 1 if out else 1)
        out.append([start, size])
    return out


def entropy_notes(history: dict) -> dict:
    """The DSVs' mean prediction entropy over a synthesis (Fig. 2a): at the start, after 50
    iterations, its minimum and at the end; and the iterations run."""
    entropy = history.get("entropy", np.array([np.nan]))
    iterations = history.get("iteration", np.arange(1, len(entropy) + 1))
    after = np.nonzero(iterations >= 50)[0]
    return {
        "iterations": int(iterations[-1]),
        "entropy_start": float(entropy[0]),
        "entropy_after_50": float(entropy[after[0]]) if len(after) else float("nan"),
        "entropy_min": float(entropy.min()),
        "entropy_end": float(entropy[-1]),
    }


class Bench:
    def __init__(self, args):
        overrides = [f"data.name={json.dumps(args.dataset)}", *args.overrides]
        if args.data_root:
            overrides.append(f"data.root={json.dumps(args.data_root)}")
        if args.quick:
            base = load_pipeline(args.pipeline, overrides=overrides).config
            overrides += [
                f"synthesis.iterations={max(base.synthesis.iterations // 5, 1)}",
                f"synthesis.lambda_warmup={base.synthesis.lambda_warmup // 5}",
                f"synthesis.resolutions={json.dumps(quick_schedule(base.synthesis.resolutions))}",
                f"select.iterations={max((base.table('select') or SelectConfig()).iterations // 5, 1)}",
            ]
            args.dm_iterations = max(args.dm_iterations // 5, 1)
            args.gm_iterations = max(args.gm_iterations // 5, 1)
            args.gm_iterations_10 = max(args.gm_iterations_10 // 5, 1)
        self.args = args
        self.pipeline = Pipeline.from_toml(args.pipeline, overrides=overrides, progress=args.progress)
        self.config = self.pipeline.config
        self.loaded = self.pipeline.model()  # trains, or reuses the cached weights
        self.base_test_accuracy = self.pipeline.context.facts.get("base_test_accuracy")
        self.data = self.pipeline.data()
        r = self.config.table("retrain") or RetrainConfig()
        self.retrainer = build_retrainer(r.retrainer, self.pipeline.plugins, self.pipeline.source, "retrain.retrainer")
        if args.quick:
            self.retrainer = attrs.evolve(self.retrainer, epochs=max(self.retrainer.epochs // 5, 1))
        same = {k: getattr(self.retrainer, k) for k in ("epochs", "batch_size", "lr", "weight_decay")}
        self.retrainers = {
            "hard": self.retrainer,
            "teacher": TeacherLabelled(**same, noise=args.teacher_noise),
            "teacher_mixup": TeacherLabelled(**same, noise=args.teacher_noise, mixup=args.mixup),
        }
        self.augmentations = build_augmentations(
            r.augmentations, self.pipeline.plugins, self.pipeline.source, "retrain"
        )
        self.seeds = [1000 + i for i in range(r.seeds)]
        test_x, self.test_y = self.data.tensors("test")
        self.test_x = normalize(test_x, self.data.mean, self.data.std)
        self.rows, self.coreset, self.notes = [], [], {}
        self.variants = {}
        for variant in args.variants:
            try:
                label, extra = cfg.split_variant(variant)
            except ValueError as exc:
                raise SystemExit(f"{exc} ([METHOD+]LABEL:synthesis.KEY=VALUE[;...])") from None
            method, plus, _ = label.rpartition("+")
            method = method if plus else "dsv_noise"
            if not all(item.startswith("synthesis.") for item in extra):
                raise SystemExit(f"--variant {variant!r}: expected [METHOD+]LABEL:synthesis.KEY=VALUE[;...]")
            if method not in ("dsv_noise", "dsv_other_data", "dsv_real_init", "dsv_defaults"):
                raise SystemExit(f"--variant {variant!r}: {method!r} is not a DSV method")
            if method == "dsv_defaults":  # the [synthesis] defaults with these keys changed
                text = f"[model]\nsource = {json.dumps(self.config.model.source)}\n"
                table = cfg.load_text(text, source="--variant", overrides=extra).config.synthesis
            else:
                table = load_pipeline(args.pipeline, overrides=[*overrides, *extra]).config.synthesis
            self.variants[label if plus else f"dsv_noise+{label}"] = table

    def score(self, images, labels, protocol: str = "hard", retrainer=None) -> dict:
        models = retrain_models(
            self.loaded.module,
            images,
            labels,
            retrainer or self.retrainers[protocol],
            augmentations=self.augmentations,
            seeds=self.seeds,
            teacher=self.loaded.module,
        )
        accs = [accuracy_on(m, self.test_x, self.test_y, self.loaded.spec.num_classes)[0] for m in models]
        return mean_std(accs)

    def images_of(self, method: str, ipc: int):
        seed = self.config.run.seed
        if method in NOISE_FLOOR:
            return self.noise(method, ipc, seed)
        if method == "random_real":
            return random_real(self.data, self.loaded.spec, ipc, seed)
        if method == "dm":
            real, labels = random_real(self.data, self.loaded.spec, ipc, seed)
            noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(seed))
            return distribution_matching(
                self.loaded.module,
                real,
                labels,
                noise,
                labels,
                iterations=self.args.dm_iterations,
                augmentations=self.augmentations,
                seed=seed,
                progress=self.args.progress,
            ), labels
        base, _, _ = method.partition("+")
        table = self.variants.get(method, cfg.SynthesisConfig() if method == "dsv_defaults" else self.config.synthesis)
        s = synthesis_for(table, base, ipc * self.args.pool)
        x, labels, alive, history = synthesize_images(
            self.loaded.module,
            self.loaded.spec,
            s,
            plugins=self.pipeline.plugins,
            data=self.data,
            seed=seed,
            progress=self.args.progress,
        )
        if self.args.pool > 1:  # the DSVs of each class: its ipc candidates with the largest lambda
            keep = top_lambda_candidates(torch.from_numpy(history["final_lambda"]), alive, labels, ipc)
            x, labels, alive = x[keep], labels[keep], alive[keep]
        self.notes[f"{method}/{ipc}"] = {
            "pool": self.args.pool,
            "alive": int(alive.sum()),
            **entropy_notes(history),
        }
        return x, labels  # dead candidates are kept: every method hands over ipc images per class

    def noise(self, method: str, ipc: int, seed: int):
        """Noise images in the input domain, ipc per class (the labels are the classes in turn)."""
        spec = self.loaded.spec
        shape = (ipc * spec.num_classes, spec.channels, spec.size, spec.size)
        gen = torch.Generator().manual_seed(seed)
        low, high = (torch.tensor(v).view(1, -1, 1, 1) for v in spec.domain)
        if method == "noise_gaussian":
            images = torch.clamp(torch.randn(shape, generator=gen), min=low, max=high)
        else:
            images = low + (high - low) * torch.rand(shape, generator=gen)
        return images, torch.arange(spec.num_classes).repeat_interleave(ipc)

    def distill(self, method: str, ipc: int) -> None:
        start = time.perf_counter()
        images, labels = self.images_of(method, ipc)
        made = time.perf_counter() - start
        shots = 0 if method.partition("+")[0] in ZERO_SHOT or method in NOISE_FLOOR else ipc
        for protocol in self.args.protocols:
            t0 = time.perf_counter()
            cell = self.score(images, labels, protocol)
            self.rows.append(
                {
                    "method": method,
                    "img_per_class": ipc,
                    "shots_per_class": shots,
                    "protocol": protocol,
                    **cell,
                    "seconds_make": made,
                    "seconds_total": made + time.perf_counter() - t0,
                }
            )
            self.flag(self.rows[-1])
            print_row(self.rows[-1])

    def flag(self, row: dict) -> None:
        """A DSV row that does not beat the noise floor (of its protocol and size) says so."""
        if not row["method"].startswith("dsv"):
            return
        floor = [
            r["mean"]
            for r in self.rows
            if r["method"] in NOISE_FLOOR
            and r["protocol"] == row["protocol"]
            and r["img_per_class"] == row["img_per_class"]
        ]
        if floor:
            row["noise_floor"] = max(floor)
            row["beats_noise_floor"] = bool(row["mean"] > max(floor))

    def coresets(self, ipcs: list[int], methods: list[str]) -> None:
        sel = self.config.table("select") or SelectConfig()
        images, labels = self.data.tensors("train")
        gen = torch.Generator().manual_seed(self.config.run.seed)
        pool = pool_indices(labels, sel.pool_per_class, gen)
        model = self.loaded.module.cpu().eval()
        start = time.perf_counter()
        lambdas = None
        inputs = normalize(images[pool], self.data.mean, self.data.std)
        if "lambda_top" in methods:
            lambdas, history, logits, features = fit_lambdas(model, inputs, labels[pool], sel, self.args.progress)
        else:
            logits, features = head_features(model, inputs)
        if lambdas is not None:  # the lambda fit's notes and rho
            num_classes = self.loaded.spec.num_classes
            sums = class_lambda_sums(lambdas.numpy(), labels[pool].numpy(), num_classes)
            per_class = accuracy_on(model, self.test_x, self.test_y, num_classes)[1]
            self.notes["select"] = {
                "seconds": time.perf_counter() - start,
                "fit": sel.fit,
                "relative_stationarity": history[-1],
                "relative_stationarity_curve": history,
                "positive_lambda": int((lambdas > 0).sum()),
                "pool": int(len(pool)),
                "pearson_lambda_accuracy": pearson(sums, per_class),
                "class_lambda_sum": sums.tolist(),
                "class_test_accuracy": per_class.tolist(),
            }
            print(
                f"select: Pearson rho (class lambda sum vs class test accuracy) "
                f"{self.notes['select']['pearson_lambda_accuracy']:.3f}"
            )
        shots = len(pool) // len(labels.unique())
        for ipc in ipcs:
            for method in methods:
                t0 = time.perf_counter()
                if method == "random":
                    chosen = random_per_class(labels[pool], ipc, torch.Generator().manual_seed(self.config.run.seed))
                elif method == "herding":
                    chosen = herding(features, labels[pool], ipc)
                else:
                    chosen = top_per_class(lambdas, labels[pool], ipc)
                idx = pool[chosen]
                for protocol in self.args.protocols:
                    cell = self.score(normalize(images[idx], self.data.mean, self.data.std), labels[idx], protocol)
                    self.coreset.append(
                        {
                            "method": method,
                            "img_per_class": ipc,
                            "shots_per_class": shots,
                            "protocol": protocol,
                            **cell,
                            "entropy": float(kkt.prediction_entropy(logits[chosen]).mean()),
                            "seconds_total": time.perf_counter() - t0,
                        }
                    )
                    print_row(self.coreset[-1])


def print_row(r: dict) -> None:
    flag = "  BELOW THE NOISE FLOOR" if r.get("beats_noise_floor") is False else ""
    print(
        f"{r['method']:<24}{r['img_per_class']:>8}{r['shots_per_class']:>8}  {r['protocol']:<8}"
        f"{100 * r['mean']:6.2f} ± {100 * r['std']:5.2f}  ({r['seeds']} seeds, {r['seconds_total']:.0f} s){flag}",
        flush=True,
    )


def table2_main(args, bench: Bench, start: float) -> int:
    """--table2: the paper's comparison, the coresets and rho with the pipeline's lambda fit, the
    ablation rows, the thread check; one JSON. With two workers the rows of :func:`worker_of`'s
    "second" part run in a child process of one thread (its JSON merged at the end), the rest here
    with one thread."""
    from paper_table2 import Table2, claims, ordered
    from paper_table2 import print_row as print_table2_row

    table = Table2(bench, args)
    threads: dict = {}
    part, child, child_json = args.table2_part, None, None
    if args.workers > 1 and part == "all":
        out_dir = Path(args.json).parent if args.json else Path(tempfile.mkdtemp(prefix="table2-"))
        child_json = out_dir / f"{Path(args.json).stem if args.json else 'table2'}.second.json"
        child_json.unlink(missing_ok=True)
        # the same arguments (the base model is cached by now); the later --json/--threads win
        argv = [*args.argv, "--table2-part", "second", "--threads", "1", "--json", str(child_json)]
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv])
        part = "main"
        torch.set_num_threads(1)

    def write(partial: bool) -> None:
        """The JSON so far (after every row: a killed run keeps what it finished)."""
        if not args.json:
            return
        zero = table.notes.get("dsv_1_0", {})
        out = {
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
                "pipeline": args.pipeline,
                "overrides": args.overrides,
                "quick": args.quick,
                "gm_iterations": args.gm_iterations,
                "gm_iterations_10": args.gm_iterations_10,
                "dm_iterations": args.dm_iterations,
                "threads": args.threads,
                "workers": args.workers,
                "part": args.table2_part,
            },
            "seconds": time.perf_counter() - start,
            "partial": partial,
        }
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        tmp.replace(args.json)

    table.written = lambda: write(True)
    table.run(part)
    if part != "second":
        print("coreset selection")
        bench.coresets([1, 10], list(CORESET_METHODS))
        write(True)
        if not args.no_ablations:
            base_bench = None
            if not args.no_base_ablation:
                other = argparse.Namespace(**vars(args))
                other.overrides = [*args.overrides, "train.retrainer.weight_decay=5e-4"]
                base_bench = Bench(other)
            table.run_ablations(base_bench)
        threads.update(table.thread_check())
    if child is not None:
        if child.wait() != 0:
            raise SystemExit(f"the second worker failed (exit {child.returncode}); its rows so far: {child_json}")
        second = json.loads(child_json.read_text())
        table.rows.extend(second["table2"])
        table.curves.update(second["curves"])
        table.notes.update({k: v for k, v in second["notes"].items() if k.startswith("dsv_")})
        if args.json:
            child_json.unlink()
    verdict = claims(table.rows)
    if part == "all" or child is not None:
        print(f"{'img/cls':>7}{'shots':>6}  {'method':<14}test accuracy (%)")
        for row in ordered(table.rows):
            print_table2_row(row)
    for key, c in verdict.items():
        print(
            f"claim {key.replace('_', ' img/cls, ')} shots: dsv {100 * c['dsv']:.2f} vs {c['best_baseline']} "
            f"{100 * c['best_mean']:.2f} (margin {100 * c['margin']:+.2f}, larger std {100 * c['larger_std']:.2f}): "
            f"{'met' if c['met'] else 'not met'}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    write(False)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bench = Bench(args)
    base = bench.base_test_accuracy
    print(f"base model test accuracy {100 * base:.2f}%" if base is not None else "base model: given weights", end="")
    print(f", {args.threads} thread(s)")
    if args.table2:
        args.protocols = ["hard"]
        return table2_main(args, bench, start)
    print(f"{'method':<24}{'img/cls':>8}{'shot/cls':>8}  {'protocol':<8}test accuracy (%)")
    for ipc in args.ipc:
        for method in (m for m in DISTILL_METHODS if m in args.methods):
            bench.distill(method, ipc)
        for method in bench.variants:
            bench.distill(method, ipc)
    core = [m for m in CORESET_METHODS if m in args.methods]
    if core:
        print("coreset selection")
        bench.coresets(args.ipc, core)
    seconds = time.perf_counter() - start
    print(f"total {seconds:.0f} s")
    if args.json:
        out = {
            "rows": bench.rows,
            "coreset": bench.coreset,
            "seconds": seconds,
            "quick": args.quick,
            "threads": args.threads,
            "overrides": args.overrides,
            "variants": args.variants,
            "notes": bench.notes,
            "base_test_accuracy": bench.base_test_accuracy,
            "base_model": bench.pipeline.context.facts.get("base_model"),
            "rho": bench.notes.get("select", {}).get("pearson_lambda_accuracy"),
            "entropy": {  # mean DSV entropy of dsv_noise at the first ipc: after 50 iterations, at the end
                "after_50": bench.notes.get(f"dsv_noise/{args.ipc[0]}", {}).get("entropy_after_50"),
                "end": bench.notes.get(f"dsv_noise/{args.ipc[0]}", {}).get("entropy_end"),
            },
            "protocols": args.protocols,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
