"""Does the bn_stats prior (plugins/dsv-bn-prior) make better ImageNet DSVs?

Runs pipelines/imagenet_gen.toml (EfficientNet-Lite0, which has BatchNorm) once per bn_stats
weight, same seed and budget, with bn_stats appended to the pipeline's priors (weight 0: the
pipeline as it is). A second model, EfficientNet-Lite2, then classifies each run's final
candidates (the store's candidates/x, de-normalized with the store's mean/std, resized to
Lite2's input size and normalized for it) and the table reports its top-1 / top-5 accuracy on
the targets and the mean probability it gives the target class. The last columns are the
bn_stats value of each run's final candidates under Lite0 (measured for every arm, also those
that did not optimize it) and the wall time.

    pip install plugins/dsv-bn-prior
    python benchmarks/bn_prior.py [--weights 0 0.001 0.01] [--set synthesis.iterations=600 ...] [--out DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dsv import config as cfg
from dsv.evaluation.verifier import score, verifier_probabilities
from dsv.pipeline import Pipeline, load_pipeline
from dsv.plugins import ModelRequest, get_plugin_manager
from dsv.store import RunStore, is_store

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "imagenet_gen.toml"
VERIFIER = "efficientnet-lite2"


def arm_overrides(path: Path, base: list[str], weight: float, first_layer_multiplier: float) -> list[str]:
    """The pipeline's own priors plus bn_stats (none for weight 0)."""
    if weight == 0:
        return list(base)
    priors = load_pipeline(path, overrides=base).raw.get("synthesis", {}).get("priors", [])
    priors = [*priors, {"name": "bn_stats", "weight": weight, "first_layer_multiplier": first_layer_multiplier}]
    return [*base, f"synthesis.priors={cfg.toml_inline(priors)}"]


@torch.no_grad()
def final_bn_stats(store: RunStore, model: torch.nn.Module, first_layer_multiplier: float) -> float:
    """bn_stats of the final candidates under the generator model (with all its BatchNorm layers)."""
    from dsv_bn_prior import BNStats

    prior = BNStats(first_layer_multiplier=first_layer_multiplier)
    prior.attach(model)
    try:
        return float(prior(torch.from_numpy(store.candidates()["x"])))
    finally:
        prior.detach()


def verify(store: RunStore, verifier) -> dict[str, float]:
    """Top-1 / top-5 of the targets and mean target probability under the verifier model."""
    meta = store.meta
    cands = store.candidates()
    probs = verifier_probabilities(cands["x"], meta["mean"], meta["std"], verifier)
    result = score(probs, cands["targets"], meta["classes"])
    return {key: result[key] for key in ("top1", "top5", "p_target")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=str(PIPELINE))
    ap.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=[0.0, 0.001, 0.01],
        help="bn_stats weights to run; 0 = without bn_stats",
    )
    ap.add_argument("--first-layer-multiplier", type=float, default=10.0)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override applied to every arm (same budget for all), e.g. synthesis.iterations=600",
    )
    ap.add_argument("--out", help="keep the run stores here (default: a temporary folder)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a finished store in --out made from the same config (hash) instead of running again",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pm = get_plugin_manager()
    if any(w > 0 for w in args.weights) and "bn_stats" not in pm.registry("priors"):
        raise SystemExit("bn_stats is not registered: pip install plugins/dsv-bn-prior first")
    verifier = pm.registry("models").get(VERIFIER)(ModelRequest())
    verifier.module.eval()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bn_prior_"))
    out.mkdir(parents=True, exist_ok=True)
    base = ["run.device='cpu'", *args.overrides]
    rows = []
    for weight in args.weights:
        overrides = arm_overrides(Path(args.pipeline), base, weight, args.first_layer_multiplier)
        store_path = out / f"bn_{weight:g}.zarr"
        pipeline = Pipeline.from_toml(
            args.pipeline, overrides=overrides, store=str(store_path), plugins=pm, progress=False, fresh=True
        )
        iterations = pipeline.config.synthesis.iterations
        done = is_store(store_path) and RunStore.open(store_path).meta
        if (
            args.reuse
            and done
            and done.get("config_hash") == pipeline.loaded.config_hash
            and done.get("committed_iteration") == iterations
        ):
            seconds, generator = float("nan"), pipeline.model().module
        else:
            start = time.time()
            pipeline.run()
            seconds = time.time() - start
            generator = pipeline.model().module
        store = RunStore.open(store_path)
        summary = store.meta["summary"]
        row = {
            "weight": weight,
            "seconds": seconds,
            "alive": summary["alive"],
            "candidates": summary["candidates"],
            "lite0_right": summary["classified_as_target"],
            "bn_end": final_bn_stats(store, generator.eval(), args.first_layer_multiplier),
            **verify(store, verifier),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\npipeline {args.pipeline}; overrides {base}; stores in {out}")
    print(
        f"verifier {VERIFIER} on the final candidates; "
        f"bn_stats first_layer_multiplier {args.first_layer_multiplier:g}\n"
    )
    header = (
        f"{'bn_stats weight':>15} | {'Lite0 right':>11} | {'alive':>5} | {'Lite2 top-1':>11} | "
        f"{'Lite2 top-5':>11} | {'Lite2 p(target)':>15} | {'final bn_stats':>14} | {'time s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        n = r["candidates"]
        print(
            f"{r['weight']:>15g} | {r['lite0_right']:>5}/{n:<5} | {r['alive']:>5} | {r['top1']:>11.3f} | "
            f"{r['top5']:>11.3f} | {r['p_target']:>15.4f} | {r['bn_end']:>14.1f} | {r['seconds']:>7.0f}"
        )


if __name__ == "__main__":
    main()
