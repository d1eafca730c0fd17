"""What one synthesis step of the stationarity term costs, per mode, against a plain forward+backward.

For each model, resolution, batch, parameter set and stationarity mode (exact, jvp,
finite_difference), a fresh subprocess times the step (forward of the candidates, the term, its
gradient in x and lambda, as SynthesisRun.step takes it) against a plain forward+backward (input
gradient of the cross entropy, theta frozen) on the same batch, interleaved, and reports the ratio of
the fastest step to the fastest forward+backward (other work on the machine only adds time; the
median ratio of neighbouring pairs is in the JSON too). Memory: peak resident growth (VmHWM reset
through /proc/self/clear_refs, freed
heap given back with malloc_trim first) of one step over that of one plain forward+backward, in
the same subprocess after a warm-up. The exact mode runs first and leaves its gradients for the
cosines of the others.

    python benchmarks/kkt_step.py [--json PATH] [--quick] [--threads 2] [--repeats 3]

Models: the builtin ConvNet (width 64, depth 3, seeded random weights) on Fashion-MNIST size
(1 x 28 x 28, 10 classes) and EfficientNet-Lite0 with its packaged ImageNet weights. CPU only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("exact", "jvp", "finite_difference")
# (model, resolution, batch, parameter set, with the micro-batch variants)
FULL = [
    ("convnet", 28, 10, "all", False),
    ("convnet", 28, 100, "all", True),
    ("convnet", 28, 100, "head", False),
    ("efficientnet-lite0", 112, 4, "all", True),
    ("efficientnet-lite0", 112, 16, "all", True),
    ("efficientnet-lite0", 224, 4, "all", True),
    ("efficientnet-lite0", 224, 16, "all", True),
    ("efficientnet-lite0", 224, 4, "head", False),
    ("efficientnet-lite0", 224, 4, "_blocks.15.*", False),
]
QUICK = [
    ("convnet", 28, 10, "all", False),
    ("efficientnet-lite0", 112, 4, "all", False),
    ("efficientnet-lite0", 224, 4, "all", False),
]


# --------------------------------------------------------------------------------------------------
# one measurement, in its own process
# --------------------------------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_growth_mib(fn) -> float:
    """Peak resident growth while ``fn`` runs (MiB): the high-water mark is reset to the current
    resident size first, after the heap gave back what it could."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def _model(name: str, seed: int = 0):
    import torch

    from dsv.builtin.models import ConvNet
    from dsv.plugins import ModelRequest, get_plugin_manager

    if name == "convnet":
        torch.manual_seed(seed)
        return ConvNet(1, 28, 10, width=64, depth=3).eval(), 1, 10
    module = get_plugin_manager().registry("models").get(name)(ModelRequest()).module.eval()
    return module, 3, 1000


def worker(spec: dict) -> dict:
    import torch

    from dsv import kkt
    from dsv.builtin.losses import Stationarity
    from dsv.kkt import modes as kkt_modes

    torch.set_num_threads(spec["threads"])
    model, channels, classes = _model(spec["model"])
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    n, size = spec["batch"], spec["resolution"]
    x = torch.randn(n, channels, size, size, generator=gen).requires_grad_(True)
    targets = torch.nn.functional.one_hot((torch.arange(n) * 7 + 3) % classes, classes).float()
    lambdas = (0.5 + torch.rand(n, generator=gen)).requires_grad_(True)
    alive = torch.ones(n, dtype=torch.bool)
    term = Stationarity(
        params=spec["params"] if spec["params"] in ("all", "head") else [spec["params"]],
        mode=spec["mode"],
        distance="l1",
        micro_batch=spec["micro_batch"],
    )
    term.attach(model)
    selected = [p for p in model.parameters() if p.requires_grad]

    def fwd_bwd():
        for p in selected:  # plain: theta frozen, as the primal term alone would see it
            p.requires_grad_(False)
        logits = model(x)
        grad = torch.autograd.grad(kkt.soft_cross_entropy(logits, targets).sum(), x)
        for p in selected:
            p.requires_grad_(True)
        return grad

    def step():
        batch = kkt.KKTBatch(model, x, model(x), targets, lambdas, alive)
        return torch.autograd.grad(term(batch), [x, lambdas])

    grads = step()
    fwd_bwd()
    start = time.perf_counter()
    mem_fb = _peak_growth_mib(fwd_bwd)
    mem_step = _peak_growth_mib(step)
    pair = time.perf_counter() - start  # small problems get more pairs, up to about budget_s
    repeats = max(spec["repeats"], min(25, int(spec["budget_s"] / max(pair, 1e-6))))
    times_fb, times_step = [], []
    for _ in range(repeats):
        for fn, times in ((fwd_bwd, times_fb), (step, times_step)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    out = {
        # fastest of each: other work on the machine only ever adds time
        "fwd_bwd_s": min(times_fb),
        "step_s": min(times_step),
        "ratio": min(times_step) / min(times_fb),
        # each step against the forward+backward just before it, for comparison
        "median_pair_ratio": statistics.median(s / f for s, f in zip(times_step, times_fb)),
        "fwd_bwd_peak_mib": mem_fb,
        "step_peak_mib": mem_step,
        "stationarity_params": int(sum(p.numel() for p in selected)),
        "repeats": repeats,
    }
    behind = kkt_modes.work_behind(model, x[:1].detach(), selected)
    out["work_behind"] = behind
    out["auto_picks"] = "exact" if behind <= kkt_modes.AUTO_EXACT_BELOW else "finite_difference"
    ref_path = Path(spec["reference"])
    if spec["mode"] == "exact":
        torch.save([g.detach() for g in grads], ref_path)
    if ref_path.exists():
        ref = torch.load(ref_path, weights_only=True)
        for key, got, want in (("cosine_x", grads[0], ref[0]), ("cosine_lambda", grads[1], ref[1])):
            got, want = got.flatten().double(), want.flatten().double()
            out[key] = float(got @ want / (got.norm() * want.norm()))
    return out


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------


def run_one(spec: dict) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADER = (
    f"{'model':<19}{'px':>4}{'batch':>6} {'params':<12}{'P':>9} {'mode':<18}{'mb':>3}"
    f"{'step/fb':>8}{'mem/fb':>8}{'cos x':>10}{'cos lam':>10}{'fb ms':>8}"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--quick", action="store_true", help="three configurations, fewer pairs (about 2 min)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="at least this many pairs (more where they are fast)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument(
        "--micro-batch",
        type=int,
        nargs="+",
        default=[0, 1],
        metavar="N",
        help="candidates per extra pass of the fast modes (0: all at once)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="MODEL:PX:BATCH:PARAMS",
        help="measure these configurations instead, e.g. efficientnet-lite0:224:4:all",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    configs = QUICK if args.quick else FULL
    if args.only:
        configs = [(m, int(px), int(b), ps, True) for m, px, b, ps in (c.split(":", 3) for c in args.only)]
    repeats = 1 if args.quick else args.repeats
    modes = ["exact"] + [m for m in args.modes if m != "exact"]  # the reference first
    rows = []
    start = time.time()
    print(f"torch threads: {args.threads}, at least {repeats} pairs; fastest step / fastest fwd+bwd, same process\n")
    print(HEADER)
    print("-" * len(HEADER))
    with tempfile.TemporaryDirectory() as tmp:
        for k, (model, res, batch, params, with_micro) in enumerate(configs):
            reference = str(Path(tmp) / f"exact-{k}.pt")
            batches = args.micro_batch if with_micro else [0]
            variants = [(m, mb) for m in modes for mb in (batches if m != "exact" else [0]) if mb < batch]
            for mode, micro_batch in variants:
                spec = dict(
                    model=model,
                    resolution=res,
                    batch=batch,
                    params=params,
                    mode=mode,
                    micro_batch=micro_batch,
                    threads=args.threads,
                    repeats=repeats,
                    reference=reference,
                    budget_s=1.0 if args.quick else 3.0,
                )
                r = run_one(spec)
                row = {
                    "model": model,
                    "resolution": res,
                    "batch": batch,
                    "params": params,
                    "mode": mode,
                    "micro_batch": micro_batch,
                    "step_over_fwd_bwd": r["ratio"],
                    "peak_mem_over_fwd_bwd": r["step_peak_mib"] / max(r["fwd_bwd_peak_mib"], 1e-3),
                    "grad_cosine_vs_exact": min(r.get("cosine_x", float("nan")), r.get("cosine_lambda", float("nan"))),
                    **r,
                }
                rows.append(row)
                auto = f"{r['auto_picks']} (work behind the first covered module: {r['work_behind']:.3f})"
                print(
                    f"{model:<19}{res:>4}{batch:>6} {params:<12}{r['stationarity_params']:>9} "
                    f"{mode:<18}{micro_batch:>3}"
                    f"{row['step_over_fwd_bwd']:>8.2f}{row['peak_mem_over_fwd_bwd']:>8.2f}"
                    f"{r.get('cosine_x', float('nan')):>10.6f}{r.get('cosine_lambda', float('nan')):>10.6f}"
                    f"{1000 * r['fwd_bwd_s']:>8.0f}",
                    flush=True,
                )
            print(f"{'':<19}auto picks {auto}")
    print(
        f"\n{time.time() - start:.0f} s in all. step/fb: one stationarity step (forward, term, gradient "
        "in x and lambda) over one plain forward+backward; mem/fb: peak resident growth, same ratio; "
        "grad_cosine_vs_exact in the JSON is min(cos x, cos lam)."
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
