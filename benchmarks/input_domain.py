"""DSVs that live where the data lives: input-domain variants of dsv.synthesize against baselines.

scikit-learn digits (8x8) scaled to [-0.5, 0.5], a fixed stratified 70/30 split. Base models are
trained to 100 % training accuracy: an MLP without normalization, a small ConvNet, and the same
ConvNet with InstanceNorm. For every base model, each row is a set of 10 images (one per class),
and every row is scored under the same protocols by fresh students of the base model's
architecture (test accuracy on the test split, mean ± std over seeds):

* ``hard``: Adam on the 10 images with their class labels (cross entropy);
* ``teach <n>s``: Adam on noised copies of the 10 images (Gaussian noise of std n data stds,
  fresh each step), soft targets = the frozen base model's softmax on each noised batch (soft
  cross entropy). One column per ``--teacher-noise`` value (default 0.1 and 0.5).

Rows: random real images, Gaussian noise (std = data std, clipped), uniform noise, unclipped
N(0, 1) noise (what the default initializer draws), DSVs with the API defaults, and DSVs with the
domain made known: (a) noise init at the data std, (b) the ``range`` penalty, (c) a clamp after
every Adam step (a ``dsv_iteration_completed`` hook), (d) a sigmoid reparametrization
``x = low + (high - low) sigmoid(z)`` (the model is wrapped so the synthesis optimizes z;
augmentations and priors act on x), and combinations: iterations, learning rates, tv, translate +
noise augmentations, stationarity over all parameters, 4 candidates per class of which the
top-lambda one is kept. When dsv.synthesize has an ``input_range`` argument, two rows use it.
The ConvNets get the rows marked ``core`` (``--all-rows``: every row). Each seed draws its own
image set (real pick, noise, synthesis seed) and its own students.

DSV rows also show: the fraction of the kept candidates' values inside the domain, their min and
max, the final relative stationarity (its parameter set differs between ``stat all`` rows and the
others), alive candidates, seconds per synthesis, and ``goals``: D every value inside, T first
teacher column >= Gaussian noise + 20 points and >= random real - 10, H hard >= half of random real.

    python benchmarks/input_domain.py [--quick] [--seeds 5] [--json out.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv.plugins import DsvPluginManager, hookimpl

LOW, HIGH = -0.5, 0.5  # the input domain: digits' 0..16 scaled
NUM_CLASSES = 10
SHAPE = (1, 8, 8)


# ---- data and base models ----------------------------------------------------------------------


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5)[:, None]  # (N, 1, 8, 8) in [-0.5, 0.5]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, stratify=d.target, random_state=0)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES)
    )


def convnet(instance_norm: bool) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        norm = [nn.InstanceNorm2d(cout, affine=True)] if instance_norm else []
        return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU()]

    return nn.Sequential(*block(1, 8), *block(8, 16), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, NUM_CLASSES))


BASE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp,
    "conv": lambda: convnet(False),
    "conv+in": lambda: convnet(True),
}


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_base(name: str, xtr: Tensor, ytr: Tensor, seed: int = 0, max_epochs: int = 400) -> nn.Module:
    """Adam, batch 64, until every training image is classified right."""
    torch.manual_seed(seed)
    model = BASE_MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        if accuracy(model, xtr, ytr) == 1.0:
            break
    model.eval()
    return model


# ---- students ------------------------------------------------------------------------------------


@attrs.define
class Protocol:
    steps: int = 300
    lr: float = 3e-3
    copies: int = 10  # noised copies of each image per teacher batch
    noises: tuple[float, ...] = (0.1, 0.5)  # teacher batch noise, in data stds: one column each


def fresh(template: nn.Module, seed: int) -> nn.Module:
    from dsv.evaluation.retraining import fresh_model

    return fresh_model(template, seed).train()


def train_hard(template: nn.Module, images: Tensor, labels: Tensor, seed: int, p: Protocol) -> nn.Module:
    model = fresh(template, seed)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    for _ in range(p.steps):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return model.eval()


def train_teacher(template: nn.Module, teacher: nn.Module, images: Tensor, seed: int, p: Protocol, noise: float):
    model = fresh(template, seed)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(seed)
    base = images.repeat(p.copies, 1, 1, 1)
    for _ in range(p.steps):
        batch = base + noise * torch.randn(base.shape, generator=gen)
        with torch.no_grad():
            soft = teacher(batch).softmax(dim=1)
        opt.zero_grad()
        (-(soft * model(batch).log_softmax(dim=1)).sum(dim=1).mean()).backward()
        opt.step()
    return model.eval()


# ---- the domain made known to a synthesis ------------------------------------------------------


class ClampToDomain:
    """Projection after each Adam step: ``run.x`` clamped to [low, high] in place."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    @hookimpl
    def dsv_iteration_completed(self, run) -> None:
        with torch.no_grad():
            run.x.data.clamp_(self.low, self.high)


def clamp_plugins():
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


AUG = [("translate", {"strength": 0.125}), ("noise", {"strength": 0.05})]
LONG = {"iterations": 1000, "lambda_warmup": 300}
DOMAIN = {"init_std": 1.0, "clamp": True}  # (a) + (c)
RECIPE = {"all_params": True, "tv": 1.0}


def variants() -> list[Variant]:
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


@attrs.define
class Bench:
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
    _clamp_pm: Any = None

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)

    def clamp_pm(self):
        if self._clamp_pm is None:
            self._clamp_pm = clamp_plugins()
        return self._clamp_pm

    # -- image sets, one per seed --

    def real(self, seed: int) -> Tensor:
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
        import dsv

        kwargs: dict[str, Any] = {"device": "cpu", "seed": seed, "progress": False, **v.options}
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
            kwargs["init"] = {"name": "noise", "std": v.init_std * self.data_std}
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
            kwargs["plugins"] = self.clamp_pm()
        if v.per_class > 1:
            kwargs["candidates_per_class"] = v.per_class
        start = time.perf_counter()
        with warnings.catch_warnings():  # the domain is handled by the row, or deliberately not
            warnings.filterwarnings("ignore", message=".*input_range is not given")
            result = dsv.synthesize(target, targets=range(NUM_CLASSES), input_shape=SHAPE, **kwargs)
        seconds = time.perf_counter() - start
        x = torch.from_numpy(result.x)
        if v.sigmoid:
            x = to_domain(x)
        keep = top_lambda_per_class(result.lambdas, result.alive, result.labels)
        info = {
            "seconds": seconds,
            "relative_stationarity": float(result.summary.get("relative_stationarity", math.nan)),
            "alive": int(result.alive[keep].sum()),
            "as_target": int((predicted(model, x[keep]) == np.arange(NUM_CLASSES)).sum()),
        }
        return x[keep], info

    # -- scoring --

    def score(self, base: nn.Module, images_of: Callable[[int], tuple[Tensor, dict]]) -> dict:
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
            "hard": mean_std(hard),
            "teacher": {str(n): mean_std(v) for n, v in soft.items()},
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
        t0 = time.perf_counter()
        base = train_base(name, self.xtr, self.ytr)
        train_acc, test_acc = accuracy(base, self.xtr, self.ytr), accuracy(base, self.xte, self.yte)
        self.base[name] = {"train": train_acc, "test": test_acc, "seconds": time.perf_counter() - t0}
        self.log(f"{name}: train {100 * train_acc:.1f} %, test {100 * test_acc:.2f} %")
        baselines = {
            "random real": lambda s: (self.real(s), {}),
            "gaussian noise": lambda s: (self.gaussian(s), {}),
            "uniform noise": lambda s: (self.uniform(s), {}),
            "gaussian std 1 (no clip)": lambda s: (self.gaussian(s, std=1.0, clip=False), {}),
        }
        for label, fn in baselines.items():
            self.add(name, label, base, fn)
        for v in dsv_variants:
            self.add(name, v.name, base, lambda s, v=v: self.dsv(base, v, s))

    def add(self, model: str, label: str, base: nn.Module, fn) -> None:
        t0 = time.perf_counter()
        try:
            row = {"model": model, "row": label, **self.score(base, fn)}
        except Exception as exc:  # a row of an API under construction must not end the table
            row = {"model": model, "row": label, "error": f"{type(exc).__name__}: {exc}"}
        row["seconds_row"] = time.perf_counter() - t0
        self.rows.append(row)
        self.log(f"  {format_row(row, self.rows)}   [{row['seconds_row']:.0f} s]")


def top_lambda_per_class(lambdas: np.ndarray, alive: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the alive candidate of largest lambda (any candidate if none is alive)."""
    keep = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        pool = idx[alive[idx]] if alive[idx].any() else idx
        keep.append(pool[np.argmax(lambdas[pool])])
    return np.asarray(keep)


def predicted(model: nn.Module, x: Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).argmax(1).numpy()


def mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": arr.tolist()}


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the MLP only, at most 2 seeds, half the student steps")
    p.add_argument("--seeds", type=int, default=5, help="image sets and students per row (default 5)")
    p.add_argument("--json", default="", help="write the rows as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--models", nargs="+", default=list(BASE_MODELS), choices=list(BASE_MODELS))
    p.add_argument("--rows", nargs="+", default=[], help="only DSV rows whose name contains one of these")
    p.add_argument("--all-rows", action="store_true", help="every DSV row on the ConvNets too (default: core rows)")
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument(
        "--teacher-noise",
        type=float,
        nargs="+",
        default=[0.1, 0.5],
        help="teacher batch noise std in data stds, one column each (default 0.1 0.5)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seeds = args.seeds
    models = args.models
    protocol = Protocol(steps=args.student_steps, noises=tuple(args.teacher_noise))
    if args.quick:
        seeds = min(seeds, 2)
        models = ["mlp"]
        protocol = attrs.evolve(protocol, steps=max(protocol.steps // 2, 1))
    xtr, ytr, xte, yte = digits_split()
    bench = Bench(
        seeds=list(range(seeds)),
        protocol=protocol,
        xtr=xtr,
        ytr=ytr,
        xte=xte,
        yte=yte,
        data_std=float(xtr.std()),
        verbose=not args.quiet,
    )
    chosen = [v for v in variants() if not args.rows or any(r in v.name for r in args.rows)]
    for name in models:
        bench.run_model(name, [v for v in chosen if name == "mlp" or v.core or args.all_rows])
    seconds = time.perf_counter() - start
    bases = ", ".join(f"{k} {100 * v['test']:.1f}" for k, v in bench.base.items())
    print(
        f"digits in [{LOW}, {HIGH}] (data std {bench.data_std:.3f}), {len(xtr)} train / {len(xte)} test; base "
        f"models at 100 % train, test % {bases}; {seeds} seeds (image set + students each); students: Adam lr "
        f"{protocol.lr}, {protocol.steps} steps; teach <n>s: {protocol.copies} noised copies per image, noise "
        f"std n x data std, soft targets from the base model; {args.threads} thread(s), {seconds:.0f} s"
    )
    print(header(protocol.noises))
    for r in bench.rows:
        print(format_row(r, bench.rows))
    if args.json:
        out = {
            "args": vars(args),
            "data_std": bench.data_std,
            "protocol": attrs.asdict(protocol),
            "base_models": bench.base,
            "seconds": seconds,
            "rows": bench.rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
