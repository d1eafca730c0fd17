"""How each stationarity mode's gradient holds up numerically, and whether DSVs depend on the
thread count: the MLP and the ConvNet of the Fashion-MNIST pipelines.

For every variant (``exact``, ``jvp``, ``finite_difference`` in the model's float32 at the default
step and at a larger one, ``finite_difference`` with float64 passes):

* ``err``: relative L2 error of d stationarity / dx against the float64 double backward, on noise
  candidates and on real images (lambda 1);
* ``threads``: relative L2 difference of that gradient computed with 1 and with 2 threads;
* ``dx 1v2``: a synthesis of ``--iterations`` steps run with 1 and with 2 threads, from the same
  seed: relative L2 difference of the final candidates, and how many end in another class;
* ``ms/step``: seconds per synthesis step (2 threads).

    python benchmarks/stationarity_modes.py [--iterations 300] [--json out.json]

The base models are trained briefly (``--epochs``) on Fashion-MNIST unless ``--set`` says otherwise:
rounding noise depends on the scale of the numbers, not on convergence.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from dsv import config as cfg
from dsv import kkt
from dsv.evaluation.baselines import synthesize_images
from dsv.pipeline import Pipeline
from dsv.plugins import normalize

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "mlp": ROOT / "pipelines" / "fashion_mnist_mlp.toml",
    "convnet": ROOT / "pipelines" / "fashion_mnist_distill.toml",
}
VARIANTS = {
    "exact": {"mode": "exact"},
    "jvp": {"mode": "jvp"},
    "fd float32 eps 3e-6": {"mode": "finite_difference", "fd_eps": 3e-6},
    "fd float32 eps 1e-3": {"mode": "finite_difference", "fd_eps": 1e-3},
    "fd float64 eps 1e-4": {"mode": "finite_difference", "fd_eps": 1e-4, "fd_precision": "float64"},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--iterations", type=int, default=300, help="synthesis steps of the thread comparison")
    p.add_argument("--epochs", type=int, default=3, help="base model training epochs (0: the pipeline's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default="")
    return p.parse_args(argv)


def stationarity_spec(options: dict) -> cfg.PluginSpec:
    return cfg.PluginSpec(name="stationarity", options={"weight": 10.0, "params": "all", **options})


def gradient(model, term_options: dict, x, targets, lambdas, plugins, threads: int):
    """d(stationarity over every parameter)/dx with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    term = cfg.build(stationarity_spec(term_options), plugins.registry("losses"), source="bench", path="loss")
    term.attach(model)
    try:
        x = x.clone().requires_grad_(True)
        batch = kkt.KKTBatch(model, x, model(x), targets, lambdas, torch.ones(len(x), dtype=torch.bool))
        return torch.autograd.grad(term(batch), x)[0]
    finally:
        term.detach()
        for p in model.parameters():
            p.requires_grad_(False)


def reference(model, x, targets, lambdas, plugins):
    wide = copy.deepcopy(model).double()
    return gradient(wide, {"mode": "exact"}, x.double(), targets.double(), lambdas.double(), plugins, 2).float()


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def measure(name: str, args) -> list[dict]:
    overrides = list(args.overrides)
    if args.epochs:
        overrides += ["train.until={}", f"train.retrainer.epochs={args.epochs}"]
    pipeline = Pipeline.from_toml(MODELS[name], overrides=overrides, progress=False)
    loaded = pipeline.model()
    model = loaded.module.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = pipeline.data()
    spec = loaded.spec
    images, labels = data.tensors("train")
    gen = torch.Generator().manual_seed(0)
    n = spec.num_classes
    real = normalize(images[:n], data.mean, data.std)
    noise = torch.randn(real.shape, generator=gen)
    targets = F.one_hot(torch.arange(n), n).float()
    lambdas = torch.ones(n)
    base = pipeline.config.synthesis
    rows = []
    for label in args.variants:
        options = VARIANTS[label]
        row: dict = {"model": name, "variant": label}
        for kind, x in (("noise", noise), ("real", real)):
            ref = reference(model, x, targets, lambdas, pipeline.plugins)
            g1 = gradient(model, options, x, targets, lambdas, pipeline.plugins, 1)
            g2 = gradient(model, options, x, targets, lambdas, pipeline.plugins, 2)
            row[f"err_{kind}"] = rel(g2, ref)
            row[f"threads_{kind}"] = rel(g1, g2)
        losses = [s for s in base.losses if s.name != "stationarity"] + [stationarity_spec(options)]
        s = attrs.evolve(base, losses=losses, iterations=args.iterations, candidates_per_class=1, checkpoint_every=0)
        s = attrs.evolve(s, lambda_warmup=min(s.lambda_warmup, args.iterations // 3))
        if s.resolutions:
            s = attrs.evolve(
                s, resolutions=[[max(1, a * args.iterations // base.iterations), b] for a, b in s.resolutions]
            )
        finals = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            x, y, _alive, _ = synthesize_images(model, spec, s, plugins=pipeline.plugins, data=data, seed=0)
            finals[threads] = x
            row[f"seconds_{threads}"] = time.perf_counter() - start
        with torch.no_grad():
            c1, c2 = model(finals[1]).argmax(1), model(finals[2]).argmax(1)
        row["dx_threads"] = rel(finals[1], finals[2])
        row["class_changes"] = int((c1 != c2).sum())
        row["ms_per_step"] = 1000 * row["seconds_2"] / args.iterations
        rows.append(row)
        print_row(row)
    return rows


def print_row(r: dict) -> None:
    print(
        f"{r['model']:<8}{r['variant']:<22}{r['err_noise']:>10.2e}{r['err_real']:>10.2e}"
        f"{r['threads_noise']:>11.2e}{r['threads_real']:>11.2e}{r['dx_threads']:>10.2e}"
        f"{r['class_changes']:>6}{r['ms_per_step']:>9.1f}",
        flush=True,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    print(
        f"{'model':<8}{'variant':<22}{'err noise':>10}{'err real':>10}{'thr noise':>11}{'thr real':>11}"
        f"{'dx 1v2':>10}{'cls':>6}{'ms/step':>9}"
    )
    rows = []
    for name in args.models:
        rows += measure(name, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "iterations": args.iterations}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
