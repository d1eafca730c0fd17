"""What one synthesis step of the stationarity term costs, per mode, against a plain
forward+backward (``benchmarks/kkt_step.py``).

:func:`measure` times, in the process that calls it (the script runs each in a fresh subprocess,
:func:`run_one`), the step (forward of the candidates, the term, its gradient in x and lambda, as
SynthesisRun.step takes it) against a plain forward+backward (input gradient of the cross entropy,
theta frozen) on the same batch, interleaved. Memory: peak resident growth (VmHWM reset through
/proc/self/clear_refs, freed heap given back with malloc_trim first) of one step over that of one
plain forward+backward, after a warm-up. The exact mode runs first and leaves its gradients for the
cosines of the others. Models: the builtin ConvNet (width 64, depth 3, seeded random weights) on
Fashion-MNIST size and EfficientNet-Lite0 with its packaged ImageNet weights. Linux, CPU only.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import dsv
from dsv import kkt
from dsv.builtin.losses import Stationarity
from dsv.kkt import modes as kkt_modes
from dsv.models import ConvNet
from dsv.plugins import ModelRequest, get_plugin_manager

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


def _model(name: str, seed: int = 0) -> tuple[nn.Module, int, int]:
    """(module in eval mode, input channels, classes)."""
    if name == "convnet":
        torch.manual_seed(seed)
        return ConvNet(1, 28, 10, width=64, depth=3).eval(), 1, 10
    module = get_plugin_manager().registry("models").get(name)(ModelRequest()).module.eval()
    return module, 3, 1000


def measure(spec: dict) -> dict:
    """One configuration in this process: ``spec`` names model, resolution, batch, params, mode,
    micro_batch, threads, repeats, budget_s and reference (a file: the exact mode writes its
    gradients there, the others read them for their cosines)."""
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
    times_fb, times_step = _interleaved(fwd_bwd, step, repeats)
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
        out.update(cosine_x=cosine(grads[0], ref[0]), cosine_lambda=cosine(grads[1], ref[1]))
    return out


def _interleaved(first: Callable, second: Callable, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` calls of each, in pairs."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, spent in zip((first, second), times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return times


def cosine(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.flatten().double(), want.flatten().double()
    return float(got @ want / (got.norm() * want.norm()))


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------


def run_one(spec: dict, command: list[str]) -> dict:
    """:func:`measure` in a fresh process: ``command`` + the spec as JSON prints the result as
    the last line of JSON (dsv importable there as here)."""
    env = dict(os.environ)
    root = str(Path(dsv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([*command, json.dumps(spec)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def specs(
    configs: list[tuple], modes: list[str], micro_batches: list[int], threads: int, repeats: int, quick: bool, tmp: str
) -> list[list[dict]]:
    """The measurements of each configuration, the exact mode first (the reference of the others)."""
    modes = ["exact"] + [m for m in modes if m != "exact"]
    out = []
    for k, (model, res, batch, params, with_micro) in enumerate(configs):
        batches = micro_batches if with_micro else [0]
        variants = [(m, mb) for m in modes for mb in (batches if m != "exact" else [0]) if mb < batch]
        common = dict(model=model, resolution=res, batch=batch, params=params, threads=threads, repeats=repeats)
        common.update(reference=str(Path(tmp) / f"exact-{k}.pt"), budget_s=1.0 if quick else 3.0)
        out.append([{**common, "mode": mode, "micro_batch": mb} for mode, mb in variants])
    return out


def table_row(spec: dict, r: dict) -> dict:
    """One row of the JSON: the configuration, the ratios, and the measurement."""
    return {
        **{k: spec[k] for k in ("model", "resolution", "batch", "params", "mode", "micro_batch")},
        "step_over_fwd_bwd": r["ratio"],
        "peak_mem_over_fwd_bwd": r["step_peak_mib"] / max(r["fwd_bwd_peak_mib"], 1e-3),
        "grad_cosine_vs_exact": min(r.get("cosine_x", float("nan")), r.get("cosine_lambda", float("nan"))),
        **r,
    }


HEADER = (
    f"{'model':<19}{'px':>4}{'batch':>6} {'params':<12}{'P':>9} {'mode':<18}{'mb':>3}"
    f"{'step/fb':>8}{'mem/fb':>8}{'cos x':>10}{'cos lam':>10}{'fb ms':>8}"
)


def format_row(row: dict) -> str:
    nan = float("nan")
    return (
        f"{row['model']:<19}{row['resolution']:>4}{row['batch']:>6} {row['params']:<12}"
        f"{row['stationarity_params']:>9} {row['mode']:<18}{row['micro_batch']:>3}"
        f"{row['step_over_fwd_bwd']:>8.2f}{row['peak_mem_over_fwd_bwd']:>8.2f}"
        f"{row.get('cosine_x', nan):>10.6f}{row.get('cosine_lambda', nan):>10.6f}{1000 * row['fwd_bwd_s']:>8.0f}"
    )


def format_auto(row: dict) -> str:
    return f"{'':<19}auto picks {row['auto_picks']} (work behind the first covered module: {row['work_behind']:.3f})"
