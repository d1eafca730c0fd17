"""Few-shot / zero-shot distillation and coreset selection, side by side with the baselines
(``benchmarks/distill.py``).

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

Protocols (each row is scored under every one, same seeds): ``hard`` (the [retrain] table's
retrainer on the hard labels) and ``teacher`` (the ``teacher`` retrainer with the same epochs,
batch size and learning rate: students learn the base model's softmax on each noised, augmented
batch); ``teacher_mixup`` is ``teacher`` with each batch input mixed with another,
``Beta(mixup, mixup)`` (the teacher labels the mixtures).

and coresets of real images: ``random``, ``herding``, ``lambda_top`` (the select stage's ranking).
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from dsv import config as cfg
from dsv import kkt
from dsv.evaluation.analysis import class_lambda_sums, pearson
from dsv.evaluation.baselines import distribution_matching, herding, random_per_class, random_real, synthesize_images
from dsv.evaluation.retraining import accuracy_on, build_augmentations, build_retrainer, mean_std, retrain_models
from dsv.kkt.selection import head_features, pool_indices, top_lambda_candidates, top_per_class
from dsv.pipeline import Pipeline, load_pipeline
from dsv.plugins import normalize
from dsv.stages.retrain import RetrainConfig
from dsv.stages.select import SelectConfig, fit_lambdas
from dsv.training import TeacherLabelled

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
DSV_METHODS = ("dsv_noise", "dsv_other_data", "dsv_real_init", "dsv_defaults")
VARIANT_FORM = "[METHOD+]LABEL:synthesis.KEY=VALUE[;...]"


@attrs.define(kw_only=True)
class DistillOptions:
    """What a distillation benchmark is asked for (the script's flags of the same names)."""

    pipeline: str
    dataset: str = "fashion-mnist"
    data_root: str = ""
    overrides: list[str] = attrs.field(factory=list)  # --set KEY=VALUE of the pipeline file
    quick: bool = False  # a fifth of the synthesis, select, retrain and baseline steps
    dm_iterations: int = 500
    gm_iterations: int = 200  # DC and DSA at 1 img/cls (Table 2)
    gm_iterations_10: int = 2  # DC and DSA at 10 img/cls
    protocols: list[str] = attrs.field(factory=lambda: list(PROTOCOLS[:2]))
    mixup: float = 1.0
    teacher_noise: float = 0.1
    pool: int = 1  # synthesize pool x ipc candidates per class, keep the top-lambda ipc
    variants: list[str] = attrs.field(factory=list)
    progress: bool = False

    @classmethod
    def from_namespace(cls, args: Any) -> DistillOptions:
        """The options of the same names from parsed arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in attrs.fields(cls)})

    def quickened(self) -> DistillOptions:
        """The baselines' iterations a fifth as long (``--quick``)."""
        fifth = {k: max(getattr(self, k) // 5, 1) for k in ("dm_iterations", "gm_iterations", "gm_iterations_10")}
        return attrs.evolve(self, **fifth)


def parse_variant(variant: str) -> tuple[str, str, list[str]]:
    """``[METHOD+]LABEL:synthesis.KEY=VALUE[;...]`` as (row name, DSV method, overrides); the
    method defaults to ``dsv_noise``. ValueError names the expected form."""
    try:
        label, extra = cfg.split_variant(variant)
    except ValueError as exc:
        raise ValueError(f"{exc} ({VARIANT_FORM})") from None
    method, plus, _ = label.rpartition("+")
    method = method if plus else "dsv_noise"
    if not all(item.startswith("synthesis.") for item in extra):
        raise ValueError(f"--variant {variant!r}: expected {VARIANT_FORM}")
    if method not in DSV_METHODS:
        raise ValueError(f"--variant {variant!r}: {method!r} is not a DSV method")
    return (label if plus else f"dsv_noise+{label}"), method, extra


def synthesis_for(s: cfg.SynthesisConfig, method: str, ipc: int) -> cfg.SynthesisConfig:
    """The pipeline's [synthesis] table with the initializer and losses of ``method``."""
    s = attrs.evolve(s, candidates_per_class=ipc, classes=[], targets=[], checkpoint_every=0)
    if method == "dsv_defaults":  # what dsv.synthesize does when given only the model's input domain
        return s
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


def noise_images(spec, method: str, ipc: int, seed: int) -> tuple[Tensor, Tensor]:
    """Noise images in the input domain ``spec.domain``, ipc per class (the labels are the
    classes in turn): ``noise_gaussian`` N(0, 1) clamped to it, ``noise_uniform`` uniform over it."""
    shape = (ipc * spec.num_classes, spec.channels, spec.size, spec.size)
    gen = torch.Generator().manual_seed(seed)
    low, high = (torch.tensor(v).view(1, -1, 1, 1) for v in spec.domain)
    if method == "noise_gaussian":
        images = torch.clamp(torch.randn(shape, generator=gen), min=low, max=high)
    else:
        images = low + (high - low) * torch.rand(shape, generator=gen)
    return images, torch.arange(spec.num_classes).repeat_interleave(ipc)


def flag_noise_floor(row: dict, rows: list[dict]) -> None:
    """A DSV row that does not beat the noise floor (of its protocol and size) says so."""
    if not row["method"].startswith("dsv"):
        return
    same = ("protocol", "img_per_class")
    floor = [r["mean"] for r in rows if r["method"] in NOISE_FLOOR and all(r[k] == row[k] for k in same)]
    if floor:
        row["noise_floor"] = max(floor)
        row["beats_noise_floor"] = bool(row["mean"] > max(floor))


def format_row(r: dict) -> str:
    """One row of the distillation or coreset table."""
    flag = "  BELOW THE NOISE FLOOR" if r.get("beats_noise_floor") is False else ""
    return (
        f"{r['method']:<24}{r['img_per_class']:>8}{r['shots_per_class']:>8}  {r['protocol']:<8}"
        f"{100 * r['mean']:6.2f} ± {100 * r['std']:5.2f}  ({r['seeds']} seeds, {r['seconds_total']:.0f} s){flag}"
    )


HEADER = f"{'method':<24}{'img/cls':>8}{'shot/cls':>8}  {'protocol':<8}test accuracy (%)"


class DistillBench:
    """A base model (trained by the pipeline, or its cached weights), its data and the retrain
    protocols; each method's images, scored by fresh students. ``options`` as given is kept in
    ``given``; ``options`` holds the effective ones (``--quick`` applied)."""

    def __init__(self, options: DistillOptions):
        variants = [parse_variant(v) for v in options.variants]  # a bad one fails before any training
        self.given = options
        overrides = [f"data.name={json.dumps(options.dataset)}", *options.overrides]
        if options.data_root:
            overrides.append(f"data.root={json.dumps(options.data_root)}")
        if options.quick:
            base = load_pipeline(options.pipeline, overrides=overrides).config
            overrides += [
                f"synthesis.iterations={max(base.synthesis.iterations // 5, 1)}",
                f"synthesis.lambda_warmup={base.synthesis.lambda_warmup // 5}",
                f"synthesis.resolutions={json.dumps(quick_schedule(base.synthesis.resolutions))}",
                f"select.iterations={max((base.table('select') or SelectConfig()).iterations // 5, 1)}",
            ]
            options = options.quickened()
        self.options = options
        self.pipeline = Pipeline.from_toml(options.pipeline, overrides=overrides, progress=options.progress)
        self.config = self.pipeline.config
        self.variants: dict[str, cfg.SynthesisConfig] = {}
        for name, method, extra in variants:
            if method == "dsv_defaults":  # the [synthesis] defaults with these keys changed
                text = f"[model]\nsource = {json.dumps(self.config.model.source)}\n"
                table = cfg.load_text(text, source="--variant", overrides=extra).config.synthesis
            else:
                table = load_pipeline(options.pipeline, overrides=[*overrides, *extra]).config.synthesis
            self.variants[name] = table
        self.loaded = self.pipeline.model()  # trains, or reuses the cached weights
        self.base_test_accuracy = self.pipeline.context.facts.get("base_test_accuracy")
        data = self.pipeline.data()
        if data is None:  # never: the options name a data set
            raise ValueError(f"{options.pipeline}: the benchmark needs a [data] table")
        self.data = data
        r = self.config.table("retrain") or RetrainConfig()
        self.retrainer = build_retrainer(r.retrainer, self.pipeline.plugins, self.pipeline.source, "retrain.retrainer")
        if options.quick:
            self.retrainer = attrs.evolve(self.retrainer, epochs=max(self.retrainer.epochs // 5, 1))
        same = {k: getattr(self.retrainer, k) for k in ("epochs", "batch_size", "lr", "weight_decay")}
        self.retrainers = {
            "hard": self.retrainer,
            "teacher": TeacherLabelled(**same, noise=options.teacher_noise),
            "teacher_mixup": TeacherLabelled(**same, noise=options.teacher_noise, mixup=options.mixup),
        }
        self.augmentations = build_augmentations(
            r.augmentations, self.pipeline.plugins, self.pipeline.source, "retrain"
        )
        self.seeds = [1000 + i for i in range(r.seeds)]
        test_x, self.test_y = self.data.tensors("test")
        self.test_x = normalize(test_x, self.data.mean, self.data.std)
        self.rows: list[dict] = []
        self.coreset: list[dict] = []
        self.notes: dict[str, dict] = {}

    @property
    def seed(self) -> int:
        return self.config.run.seed

    def score(self, images: Tensor, labels: Tensor, protocol: str = "hard", retrainer=None) -> dict:
        """Test accuracy (mean, std, seeds) of fresh students trained on ``images`` under ``protocol``
        (or ``retrainer``)."""
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

    def synthesize(self, synthesis: cfg.SynthesisConfig, keep_per_class: int = 0):
        """Candidates of one [synthesis] table (no store): (x, labels, alive, history); with
        ``keep_per_class``, only that many of each class, the largest lambda first."""
        x, labels, alive, history = synthesize_images(
            self.loaded.module,
            self.loaded.spec,
            synthesis,
            plugins=self.pipeline.plugins,
            data=self.data,
            seed=self.seed,
            progress=self.options.progress,
        )
        if keep_per_class:
            keep = top_lambda_candidates(torch.from_numpy(history["final_lambda"]), alive, labels, keep_per_class)
            x, labels, alive = x[keep], labels[keep], alive[keep]
        return x, labels, alive, history

    def images_of(self, method: str, ipc: int) -> tuple[Tensor, Tensor]:
        if method in NOISE_FLOOR:
            return noise_images(self.loaded.spec, method, ipc, self.seed)
        if method == "random_real":
            return random_real(self.data, self.loaded.spec, ipc, self.seed)
        if method == "dm":
            real, labels = random_real(self.data, self.loaded.spec, ipc, self.seed)
            noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(self.seed))
            images = distribution_matching(
                self.loaded.module,
                real,
                labels,
                noise,
                labels,
                iterations=self.options.dm_iterations,
                augmentations=self.augmentations,
                seed=self.seed,
                progress=self.options.progress,
            )
            return images, labels
        base, _, _ = method.partition("+")
        table = self.variants.get(method, cfg.SynthesisConfig() if method == "dsv_defaults" else self.config.synthesis)
        pool = self.options.pool
        s = synthesis_for(table, base, ipc * pool)
        # the DSVs of each class: with a pool, its ipc candidates with the largest lambda
        x, labels, alive, history = self.synthesize(s, keep_per_class=ipc if pool > 1 else 0)
        self.notes[f"{method}/{ipc}"] = {"pool": pool, "alive": int(alive.sum()), **entropy_notes(history)}
        return x, labels  # dead candidates are kept: every method hands over ipc images per class

    def distill(self, method: str, ipc: int) -> None:
        """The rows of ``method`` at ``ipc`` images per class, one per protocol."""
        start = time.perf_counter()
        images, labels = self.images_of(method, ipc)
        made = time.perf_counter() - start
        shots = 0 if method.partition("+")[0] in ZERO_SHOT or method in NOISE_FLOOR else ipc
        for protocol in self.options.protocols:
            t0 = time.perf_counter()
            cell = self.score(images, labels, protocol)
            row = {"method": method, "img_per_class": ipc, "shots_per_class": shots, "protocol": protocol, **cell}
            row.update(seconds_make=made, seconds_total=made + time.perf_counter() - t0)
            flag_noise_floor(row, self.rows)
            self.rows.append(row)
            print(format_row(row), flush=True)

    def select_notes(self, lambdas: Tensor, labels: Tensor, history: list[float], pool: Tensor, fit: str) -> dict:
        """The lambda fit of the coresets: its stationarity curve and rho (class lambda sum vs
        class test accuracy of the base model)."""
        num_classes = self.loaded.spec.num_classes
        sums = class_lambda_sums(lambdas.numpy(), labels.numpy(), num_classes)
        per_class = accuracy_on(self.loaded.module, self.test_x, self.test_y, num_classes)[1]
        return {
            "fit": fit,
            "relative_stationarity": history[-1],
            "relative_stationarity_curve": history,
            "positive_lambda": int((lambdas > 0).sum()),
            "pool": int(len(pool)),
            "pearson_lambda_accuracy": pearson(sums, per_class),
            "class_lambda_sum": sums.tolist(),
            "class_test_accuracy": per_class.tolist(),
        }

    def coresets(self, ipcs: list[int], methods: list[str]) -> None:
        """Coresets of real training images (a pool of [select] pool_per_class per class)."""
        sel = self.config.table("select") or SelectConfig()
        images, labels = self.data.tensors("train")
        pool = pool_indices(labels, sel.pool_per_class, torch.Generator().manual_seed(self.seed))
        model = self.loaded.module.cpu().eval()
        start = time.perf_counter()
        lambdas = None
        inputs = normalize(images[pool], self.data.mean, self.data.std)
        if "lambda_top" in methods:
            lambdas, history, logits, features = fit_lambdas(model, inputs, labels[pool], sel, self.options.progress)
            notes = self.select_notes(lambdas, labels[pool], history, pool, sel.fit)
            self.notes["select"] = {"seconds": time.perf_counter() - start, **notes}
            rho = self.notes["select"]["pearson_lambda_accuracy"]
            print(f"select: Pearson rho (class lambda sum vs class test accuracy) {rho:.3f}")
        else:
            logits, features = head_features(model, inputs)
        shots = len(pool) // len(labels.unique())
        for ipc in ipcs:
            for method in methods:
                t0 = time.perf_counter()
                if method == "random":
                    chosen = random_per_class(labels[pool], ipc, torch.Generator().manual_seed(self.seed))
                elif method == "herding":
                    chosen = herding(features, labels[pool], ipc)
                else:
                    assert lambdas is not None  # fitted above for lambda_top
                    chosen = top_per_class(lambdas, labels[pool], ipc)
                idx = pool[chosen]
                entropy = float(kkt.prediction_entropy(logits[chosen]).mean())
                for protocol in self.options.protocols:
                    cell = self.score(normalize(images[idx], self.data.mean, self.data.std), labels[idx], protocol)
                    row = {"method": method, "img_per_class": ipc, "shots_per_class": shots, "protocol": protocol}
                    row.update(cell, entropy=entropy, seconds_total=time.perf_counter() - t0)
                    self.coreset.append(row)
                    print(format_row(row), flush=True)

    def run(self, ipcs: list[int], methods: list[str]) -> None:
        """The distillation rows (and the variants) at each ipc, then the coresets asked for."""
        print(HEADER)
        for ipc in ipcs:
            for method in [*(m for m in DISTILL_METHODS if m in methods), *self.variants]:
                self.distill(method, ipc)
        core = [m for m in CORESET_METHODS if m in methods]
        if core:
            print("coreset selection")
            self.coresets(ipcs, core)

    def result(self, ipcs: list[int], seconds: float, threads: int) -> dict:
        """The distillation JSON."""
        first = self.notes.get(f"dsv_noise/{ipcs[0]}", {})
        return {
            "rows": self.rows,
            "coreset": self.coreset,
            "seconds": seconds,
            "quick": self.options.quick,
            "threads": threads,
            "overrides": self.options.overrides,
            "variants": self.options.variants,
            "notes": self.notes,
            "base_test_accuracy": self.base_test_accuracy,
            "base_model": self.pipeline.context.facts.get("base_model"),
            "rho": self.notes.get("select", {}).get("pearson_lambda_accuracy"),
            # mean DSV entropy of dsv_noise at the first ipc: after 50 iterations, at the end
            "entropy": {"after_50": first.get("entropy_after_50"), "end": first.get("entropy_end")},
            "protocols": self.options.protocols,
        }
