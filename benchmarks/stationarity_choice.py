"""Which stationarity set-up works? Measures relative stationarity, survivors and entropy.

Two parts, both on pipelines/fashion_mnist_dsv.toml's trained ConvNet (trained or reused first):

1. ``explain``: with REAL training images held fixed, fit lambda >= 0 to minimise the stationarity
   distance over a parameter set. This bounds what the term can do per parameter set: weights that
   feed a normalization layer are scale-invariant and cannot be explained at all.
2. ``synthesize``: full DeepKKT runs from noise with the variants that decided the defaults.

    python benchmarks/stationarity_choice.py [--iterations 1000] [--part explain|synthesize|both]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dsv import kkt
from dsv.pipeline import Pipeline

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "fashion_mnist_dsv.toml"
PARAM_SETS = {
    "head": "head",
    "first conv (feeds a norm)": ["features.0.*"],
    "norm affine": ["features.1.*", "features.5.*", "features.9.*"],
    "all": "all",
}
VARIANTS = {
    "default (head, l1, relative, clean only)": [],
    "stationarity also on augmented copies": [
        "synthesis.losses=[{name='primal'},{name='stationarity',augmented=true}]"
    ],
    "l2 distance": ["synthesis.losses=[{name='primal'},{name='stationarity',distance='l2'}]"],
    "all parameters": ["synthesis.losses=[{name='primal'},{name='stationarity',params='all'}]"],
    "no lambda warm-up": ["synthesis.lambda_warmup=0"],
    "absolute distance, weight 1 (paper)": [
        "synthesis.losses=[{name='primal'},{name='stationarity',relative=false,weight=1.0}]"
    ],
    "primal only": ["synthesis.losses=[{name='primal'}]"],
}


def explain(pipeline: Pipeline, per_class: list[int], steps: int = 600) -> None:
    model = pipeline.model().module.eval()
    data = pipeline.data()
    images, labels = data.tensors("train")
    images = (images - data.mean[0]) / data.std[0]
    print(f"\n{'images/class':>12} | {'parameters':<28} | {'P':>7} | {'rel L1':>7} | {'rel L2':>7}")
    print("-" * 74)
    for n in per_class:
        idx = torch.cat([(labels == c).nonzero().flatten()[:n] for c in range(data.num_classes)])
        x, t = images[idx], torch.nn.functional.one_hot(labels[idx], data.num_classes).float()
        for label, selection in PARAM_SETS.items():
            params = [p for _, p in kkt.select_parameters(model, selection)]
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            logits = model(x)
            rows = []
            for i in range(len(x)):  # per-sample gradients: x is fixed, so G is linear in lambda
                g = torch.autograd.grad(
                    kkt.soft_cross_entropy(logits[i : i + 1], t[i : i + 1]).sum(), params, retain_graph=True
                )
                rows.append(torch.cat([a.flatten() for a in g]))
            grads = torch.stack(rows)
            theta = torch.cat([p.detach().flatten() for p in params])
            rel = {}
            for dist in ("l1", "l2"):
                lam = torch.ones(len(x), requires_grad=True)
                opt = torch.optim.Adam([lam], lr=0.5)
                for _ in range(steps):
                    r = theta + lam.clamp(min=0) @ grads
                    loss = r.abs().mean() if dist == "l1" else r.pow(2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                ref = theta.abs().mean() if dist == "l1" else theta.pow(2).mean()
                rel[dist] = float(loss.detach() / ref)
            print(f"{n:>12} | {label:<28} | {theta.numel():>7} | {rel['l1']:>7.4f} | {rel['l2']:>7.4f}", flush=True)


def synthesize(iterations: int) -> None:
    print(f"\n{'variant':<42} | alive | right | rel stat | entropy start -> end | seconds")
    print("-" * 96)
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in VARIANTS.items():
            start = time.time()
            p = Pipeline.from_toml(
                PIPELINE,
                overrides=[*overrides, f"synthesis.iterations={iterations}", "run.stages=['train','synthesize']"],
                store=str(Path(tmp) / f"{len(label)}-{hash(label) & 0xFFFF}.zarr"),
                progress=False,
            )
            s = p.run().summary
            rel = s.get("relative_stationarity", float("nan"))
            print(
                f"{label:<42} | {s['alive']:>5} | {s['classified_as_target']:>5} | {rel:>8.4f} | "
                f"{s['entropy_start']:>8.3f} -> {s['entropy_end']:<8.3f} | {time.time() - start:>7.0f}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--part", choices=("explain", "synthesize", "both"), default="both")
    ap.add_argument("--per-class", type=int, nargs="+", default=[1, 10, 50])
    args = ap.parse_args()
    if args.part in ("explain", "both"):
        explain(Pipeline.from_toml(PIPELINE, progress=False), args.per_class)
    if args.part in ("synthesize", "both"):
        synthesize(args.iterations)


if __name__ == "__main__":
    main()
