"""DSVs that live where the data lives: input-domain variants of dsv.synthesize against baselines
(``benchmarks/input_domain.py``), on the digits of :mod:`dsv.bench.digits`.

For every base model, each row is a set of 10 images (one per class), scored under the same
protocols by fresh students (test accuracy, mean ± std over seeds): ``hard`` and one ``teach <n>s``
column per teacher noise. Rows: random real images, Gaussian noise (std = data std, clipped),
uniform noise, unclipped N(0, 1) noise (what the default initializer draws), DSVs with the API
defaults, and DSVs with the domain made known: (a) noise init at the data std, (b) the ``range``
penalty, (c) a clamp after every Adam step (a ``dsv_iteration_completed`` hook), (d) a sigmoid
reparametrization ``x = low + (high - low) sigmoid(z)`` (the model is wrapped so the synthesis
optimizes z; augmentations and priors act on x), and combinations (:func:`variants`). Each seed
draws its own image set (real pick, noise, synthesis seed) and its own students.

DSV rows also show: the fraction of the kept candidates' values inside the domain, their min and
max, the final relative stationarity, alive candidates, seconds per synthesis, and :func:`goals`.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from dsv.bench.digits import HIGH, LOW, NUM_CLASSES, SHAPE, Protocol, accuracy, train_base, train_hard, train_teacher
from dsv.kkt.selection import top_lambda_candidates
from dsv.plugins import DsvPluginManager, hookimpl

ImageSet = Callable[[int], tuple[Tensor, dict]]  # seed -> (images, notes)

# ---- the domain made known to a synthesis ------------------------------------------------------


class ClampToDomain:
    """Projection after each Adam step: ``run.x`` clamped to [low, high] in place."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    @hookimpl
    def dsv_iteration_completed(self, run) -> None:
        with torch.no_grad():
            run.x.data.clamp_(self.low, self.high)


@functools.cache
def clamp_plugins() -> DsvPluginManager:
    """The plugins with :class:`ClampToDomain` on [LOW, HIGH] (made once: the hook keeps no state)."""
    pm = DsvPluginManager()
    pm.register(ClampToDomain(LOW, HIGH), "clamp-to-domain")
    return pm


def to_domain(z: Tensor) -> Tensor:
    return LOW + (HIGH - LOW) * torch.sigmoid(z)


def from_domain(x: Tensor, eps: float = 1e-4) -> Tensor:
    return torch.logit(((x - LOW) / (HIGH - LOW)).clamp(eps, 1 - eps))


class SigmoidInput(nn.Module):
    """The model seen through x = low + (high - low) sigmoid(z): a synthesis optimizes z."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model(to_domain(z))


@attrs.define
class InDomainAugmentation:
    """An augmentation applied to x = sigmoid(z), handed back in z (the wrapper undoes it)."""

    aug: Any

    def __call__(self, z: Tensor) -> Tensor:
        return from_domain(self.aug(to_domain(z)))


@attrs.define
class InDomainPrior:
    """A prior evaluated on x = sigmoid(z)."""

    prior: Any
    weight: float = attrs.field(init=False)

    def __attrs_post_init__(self):
        self.weight = self.prior.weight

    def __call__(self, z: Tensor) -> Tensor:
        return self.prior(to_domain(z))


# ---- rows ----------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Variant:
    """One DSV row: the keywords handed to dsv.synthesize, and how the domain is enforced."""

    name: str
    core: bool = False  # also run on the ConvNets
    init_std: float | None = None  # noise init std in data stds; None: the API default (std 1)
    range_weight: float = 0.0  # the built-in range prior on [LOW, HIGH]
    clamp: bool = False  # projection after every Adam step (a dsv_iteration_completed hook)
    sigmoid: bool = False  # x = LOW + (HIGH - LOW) sigmoid(z), z optimized
    z_std: float = 1.5  # sigmoid: init noise std of z (x then has std 0.27, 0.72 data std)
    tv: float = 0.0  # the built-in tv prior
    all_params: bool = False  # stationarity over every parameter (exact double backward)
    augmentations: list[tuple[str, dict]] = attrs.field(factory=list)
    per_class: int = 1  # candidates per class; the top-lambda one of each class is kept
    api_range: bool = False  # dsv.synthesize(..., input_range=(LOW, HIGH)) and nothing else
    options: dict[str, Any] = attrs.field(factory=dict)  # other [synthesis] keys


def augmentation(name: str, options: dict):
    from dsv.builtin.augmentations import Noise, Translate

    return {"translate": Translate, "noise": Noise}[name](**options)


AUG: list[tuple[str, dict]] = [("translate", {"strength": 0.125}), ("noise", {"strength": 0.05})]
LONG: dict[str, Any] = {"iterations": 1000, "lambda_warmup": 300}
DOMAIN: dict[str, Any] = {"init_std": 1.0, "clamp": True}  # (a) + (c)
RECIPE: dict[str, Any] = {"all_params": True, "tv": 1.0}


def variants() -> list[Variant]:
    """The DSV rows; the ConvNets get those marked ``core``."""
    V = Variant
    rows = [
        V(name="dsv defaults", core=True),
        V(name="(a) init std", init_std=1.0, core=True),
        V(name="(b) a + range w=1", init_std=1.0, range_weight=1.0),
        V(name="(b) a + range w=10", init_std=1.0, range_weight=10.0, core=True),
        V(name="(b) a + range w=100", init_std=1.0, range_weight=100.0),
        V(name="(c) a + clamp", **DOMAIN, core=True),
        V(name="a + range10 + clamp", **DOMAIN, range_weight=10.0),
        V(name="(d) sigmoid", sigmoid=True, core=True),
        V(name="(d) sigmoid lr_x 0.2", sigmoid=True, options={"lr_x": 0.2}),
        V(name="d + aug", sigmoid=True, augmentations=AUG),
        V(name="c + 1000 it", **DOMAIN, options=LONG, core=True),
        V(name="c + lr_x 0.01", **DOMAIN, options={"lr_x": 0.01}),
        V(name="c + lr_lambda 0.1", **DOMAIN, options={"lr_lambda": 0.1}),
        V(name="c + tv 1", **DOMAIN, tv=1.0),
        V(name="c + aug", **DOMAIN, augmentations=AUG, core=True),
        V(name="c + 4/cls top-lambda", **DOMAIN, per_class=4),
        V(name="c + stat all", **DOMAIN, all_params=True, core=True),
        V(name="c + stat all + aug", **DOMAIN, all_params=True, augmentations=AUG),
        V(name="c + stat all + tv 1", **DOMAIN, **RECIPE, core=True),
        V(name="c + stat all + tv 3", **DOMAIN, all_params=True, tv=3.0),
        V(name="c + all + tv1 + 1000 it", **DOMAIN, **RECIPE, options=LONG),
        V(name="a + stat all + tv 1", init_std=1.0, **RECIPE, core=True),
        V(name="b100 + stat all + tv 1", init_std=1.0, range_weight=100.0, **RECIPE, core=True),
        V(name="d + stat all + tv 1", sigmoid=True, **RECIPE, core=True),
    ]
    import dsv

    if "input_range" in inspect.signature(dsv.synthesize).parameters:  # the API's own domain handling
        rows += [
            V(name="API input_range", api_range=True, core=True),
            V(name="API input_range + all + tv1", api_range=True, **RECIPE, core=True),
            V(name="API input_range + aug", api_range=True, augmentations=AUG, core=True),
        ]
    return rows


def synthesize_keywords(v: Variant, model: nn.Module, data_std: float) -> tuple[nn.Module, dict[str, Any]]:
    """The model handed to dsv.synthesize for ``v`` (wrapped for the sigmoid rows) and the
    keywords of the row (beyond device, seed, targets and shape)."""
    kwargs: dict[str, Any] = dict(v.options)
    priors: list[Any] = [{"name": "tv", "weight": v.tv}] if v.tv else []
    augs = [augmentation(n, o) for n, o in v.augmentations]
    target = model
    if v.sigmoid:
        from dsv.builtin.priors import TotalVariation

        target = SigmoidInput(model)
        kwargs["init"] = {"name": "noise", "std": v.z_std}
        priors = [InDomainPrior(TotalVariation(weight=v.tv))] if v.tv else []
        augs = [InDomainAugmentation(a) for a in augs]
    if v.init_std is not None:
        kwargs["init"] = {"name": "noise", "std": v.init_std * data_std}
    if v.range_weight:
        priors.append({"name": "range", "weight": v.range_weight, "low": LOW, "high": HIGH})
    if v.api_range:
        kwargs["input_range"] = (LOW, HIGH)
    if priors:
        kwargs["priors"] = priors
    if v.all_params:
        kwargs["losses"] = [{"name": "primal"}, {"name": "stationarity", "params": "all", "mode": "exact"}]
    if augs:
        kwargs["augmentations"] = augs
    if v.clamp:
        kwargs["plugins"] = clamp_plugins()
    if v.per_class > 1:
        kwargs["candidates_per_class"] = v.per_class
    return target, kwargs


def top_lambda_per_class(lambdas: np.ndarray, alive: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class in turn, the alive candidate of largest lambda (any candidate if none is alive)."""
    chosen = top_lambda_candidates(torch.from_numpy(lambdas), torch.from_numpy(alive), torch.from_numpy(labels), 1)
    keep = chosen.numpy()
    return keep[np.argsort(labels[keep], kind="stable")]


def mean_std_values(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": arr.tolist()}


@attrs.define
class DomainBench:
    """The table: per base model, the baseline rows and the DSV rows, each scored by students."""

    seeds: list[int]
    protocol: Protocol
    xtr: Tensor
    ytr: Tensor
    xte: Tensor
    yte: Tensor
    data_std: float
    verbose: bool = True
    rows: list[dict] = attrs.field(factory=list)
    base: dict[str, dict] = attrs.field(factory=dict)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)

    # -- image sets, one per seed --

    def real(self, seed: int) -> Tensor:
        """One random training image per class."""
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(NUM_CLASSES):
            pool = (self.ytr == c).nonzero().flatten()
            picks.append(pool[torch.randint(len(pool), (1,), generator=gen)])
        return self.xtr[torch.cat(picks)]

    def gaussian(self, seed: int, std: float | None = None, clip: bool = True) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((NUM_CLASSES, *SHAPE), generator=gen) * (self.data_std if std is None else std)
        return x.clamp(LOW, HIGH) if clip else x

    def uniform(self, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return LOW + (HIGH - LOW) * torch.rand((NUM_CLASSES, *SHAPE), generator=gen)

    def dsv(self, model: nn.Module, v: Variant, seed: int) -> tuple[Tensor, dict]:
        """The DSVs of row ``v`` (one per class, in the domain's units) and their notes."""
        import dsv

        target, kwargs = synthesize_keywords(v, model, self.data_std)
        start = time.perf_counter()
        with warnings.catch_warnings():  # the domain is handled by the row, or deliberately not
            warnings.filterwarnings("ignore", message=".*input_range is not given")
            result = dsv.synthesize(
                target, targets=range(NUM_CLASSES), input_shape=SHAPE, device="cpu", seed=seed, progress=False, **kwargs
            )
        seconds = time.perf_counter() - start
        x = torch.from_numpy(result.x)
        if v.sigmoid:
            x = to_domain(x)
        keep = top_lambda_per_class(result.lambdas, result.alive, result.labels)
        with torch.no_grad():
            predicted = model(x[keep]).argmax(1).numpy()
        info = {
            "seconds": seconds,
            "relative_stationarity": float(result.summary.get("relative_stationarity", math.nan)),
            "alive": int(result.alive[keep].sum()),
            "as_target": int((predicted == np.arange(NUM_CLASSES)).sum()),
        }
        return x[keep], info

    # -- scoring --

    def score(self, base: nn.Module, images_of: ImageSet) -> dict:
        """Students of ``base``'s architecture on each seed's image set: hard and teacher
        accuracies, where the values lie, and the image sets' notes averaged."""
        labels = torch.arange(NUM_CLASSES)
        hard, infos, sets = [], [], []
        soft: dict[float, list[float]] = {n: [] for n in self.protocol.noises}
        for seed in self.seeds:
            images, info = images_of(seed)
            images = images.detach().float()
            infos.append(info)
            sets.append(images)
            student_seed = 1000 + seed
            hard.append(accuracy(train_hard(base, images, labels, student_seed, self.protocol), self.xte, self.yte))
            for n in self.protocol.noises:
                student = train_teacher(base, base, images, student_seed, self.protocol, n * self.data_std)
                soft[n].append(accuracy(student, self.xte, self.yte))
        values = torch.stack(sets)
        row = {
            "hard": mean_std_values(hard),
            "teacher": {str(n): mean_std_values(v) for n, v in soft.items()},
            "inside": float(((values >= LOW - 1e-6) & (values <= HIGH + 1e-6)).float().mean()),
            "min": float(values.min()),
            "max": float(values.max()),
            "std": float(values.std()),
        }
        if infos and infos[0]:
            for key in infos[0]:
                row[key] = float(np.mean([i[key] for i in infos]))
        return row

    def run_model(self, name: str, dsv_variants: list[Variant]) -> None:
        """Train base model ``name``, then its baseline rows and ``dsv_variants``."""
        t0 = time.perf_counter()
        base = train_base(name, self.xtr, self.ytr)
        train_acc, test_acc = accuracy(base, self.xtr, self.ytr), accuracy(base, self.xte, self.yte)
        self.base[name] = {"train": train_acc, "test": test_acc, "seconds": time.perf_counter() - t0}
        self.log(f"{name}: train {100 * train_acc:.1f} %, test {100 * test_acc:.2f} %")
        baselines: dict[str, ImageSet] = {
            "random real": lambda s: (self.real(s), {}),
            "gaussian noise": lambda s: (self.gaussian(s), {}),
            "uniform noise": lambda s: (self.uniform(s), {}),
            "gaussian std 1 (no clip)": lambda s: (self.gaussian(s, std=1.0, clip=False), {}),
        }
        for label, fn in baselines.items():
            self.add(name, label, base, fn)
        for v in dsv_variants:
            self.add(name, v.name, base, functools.partial(self.dsv, base, v))

    def add(self, model: str, label: str, base: nn.Module, fn: ImageSet) -> None:
        t0 = time.perf_counter()
        try:
            row = {"model": model, "row": label, **self.score(base, fn)}
        except Exception as exc:  # a row of an API under construction must not end the table
            row = {"model": model, "row": label, "error": f"{type(exc).__name__}: {exc}"}
        row["seconds_row"] = time.perf_counter() - t0
        self.rows.append(row)
        self.log(f"  {format_row(row, self.rows)}   [{row['seconds_row']:.0f} s]")


# ---- the table -----------------------------------------------------------------------------------


def cell(d: dict) -> str:
    return f"{100 * d['mean']:5.1f} ± {100 * d['std']:4.1f}"


def optional(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def header(noises) -> str:
    teach = " ".join(f"{'teach ' + format(n, 'g') + 's':>12}" for n in noises)
    return (
        f"{'model':<8} {'row':<28} {'hard':>12} {teach} {'inside':>7} {'min':>6} {'max':>6} "
        f"{'rel.stat':>8} {'alive':>5} {'s/run':>5} {'goals':>5}"
    )


def goals(r: dict, rows: list[dict]) -> str:
    """D: every value inside the domain; T: first teacher column >= gaussian noise + 20 points and
    >= random real - 10; H: hard >= half of random real (the issue's goals). Only for DSV rows."""
    if "relative_stationarity" not in r:
        return ""
    same = {x["row"]: x for x in rows if x["model"] == r["model"] and "error" not in x}
    real, noise = same.get("random real"), same.get("gaussian noise")
    if real is None or noise is None:
        return ""
    first = next(iter(r["teacher"]))
    teach, teach_real, teach_noise = (x["teacher"][first]["mean"] for x in (r, real, noise))
    flags = (
        "D" if r["inside"] == 1.0 else "-",
        "T" if teach >= teach_noise + 0.2 and teach >= teach_real - 0.1 else "-",
        "H" if r["hard"]["mean"] >= real["hard"]["mean"] / 2 else "-",
    )
    return "".join(flags)


def format_row(r: dict, rows: list[dict]) -> str:
    if "error" in r:
        return f"{r['model']:<8} {r['row']:<28} failed: {r['error'][:120]}"
    teach = " ".join(f"{cell(v):>12}" for v in r["teacher"].values())
    return (
        f"{r['model']:<8} {r['row']:<28} {cell(r['hard']):>12} {teach} "
        f"{100 * r['inside']:6.1f}% {r['min']:6.2f} {r['max']:6.2f} "
        f"{optional(r, 'relative_stationarity', '8.3f'):>8} {optional(r, 'alive', '5.1f'):>5} "
        f"{optional(r, 'seconds', '5.1f'):>5} {goals(r, rows):>5}"
    )
