"""The HTML report of a run store: one self-contained file (every image an inline PNG, no script,
no network) with the run's provenance and config, the candidates (grid and ranked by lambda, with
the verifier's top-3), the history curves and every stage result the store holds.

It reads what any readable store has (schema 2 or 3, one group or several, finished or not) and
says what is missing rather than failing: a report of an unfinished run says it is unfinished.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dsv.store.export import _title, pyplot, to_images
from dsv.store.run_store import RunStore

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;padding:0 20px 40px;
color:#1d2433;background:#fbfbfd}
h1{font-size:24px;margin:24px 0 4px}h2{font-size:18px;margin:30px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#667}table{border-collapse:collapse;margin:6px 0}
td,th{padding:3px 10px;border-bottom:1px solid #e6e6ee;text-align:left;vertical-align:top}th{background:#f0f1f6}
.banner{padding:8px 12px;border-radius:6px;margin:10px 0;font-weight:600}
.warn{background:#fff4d6;border:1px solid #e8c766}.ok{background:#e7f6ea;border:1px solid #8fca9a}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #dde;border-radius:6px;
padding:6px;width:124px;font-size:11px}.card img{width:112px;height:112px;image-rendering:pixelated;display:block}
.card.large{width:236px;font-size:12px}.card.large img{width:224px;height:224px;image-rendering:auto}
.card.dead{opacity:.55;border-style:dashed}.plot{max-width:100%;background:#fff;border:1px solid #dde;border-radius:6px}
pre{background:#f4f5f9;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
.rank{font-weight:700;color:#335}.row{display:flex;flex-wrap:wrap;gap:0 40px}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""


# the page loads nothing and runs nothing: inline images and styles only (a browser enforces it)
CSP = (
    '<meta http-equiv="Content-Security-Policy" '
    "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'\">"
)


def _png(fig: Any) -> str:
    """A matplotlib figure as an inline ``<img>`` (closed afterwards)."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return _img(buffer.getvalue(), "plot")


def _img(data: bytes, css: str = "", alt: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _image_png(image: np.ndarray) -> bytes:
    """One displayable image (H, W, C in [0, 1]) as PNG bytes."""
    from PIL import Image

    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    mode_image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    mode_image.save(buffer, format="PNG")
    return buffer.getvalue()


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...] = ()) -> str:
    def cell(v: Any, tag: str = "td") -> str:
        if isinstance(v, float):
            return f'<{tag} class="num">{v:.4g}</{tag}>'
        return f"<{tag}>{html.escape(str(v))}</{tag}>"

    header = "<tr>" + "".join(cell(h, "th") for h in head) + "</tr>" if head else ""
    return "<table>" + header + "".join("<tr>" + "".join(map(cell, r)) + "</tr>" for r in rows) + "</table>"


def _status(store: RunStore, meta: dict[str, Any]) -> tuple[bool, str]:
    """(finished, one line saying so)."""
    planned = (meta.get("config") or {}).get("synthesis", {}).get("iterations")
    done = int(meta.get("committed_iteration", 0))
    if not store.has_candidates:
        return True, "no synthesis in this store (stages after it only)"
    # a group without its final summary was stopped (killed, interrupted); one with fewer
    # iterations than planned was asked to stop early (a lifecycle hook)
    short = [
        r.label or "run" for r in store.regions() if not r.summary or (planned and r.committed_iteration < planned)
    ]
    if short:
        of = f" of {planned}" if planned else ""
        return False, f"unfinished run: {done}{of} iterations committed (unfinished: {', '.join(short)})"
    return True, f"finished: {done} iterations"


def _provenance(store: RunStore, meta: dict[str, Any]) -> str:
    seconds = sum(r.seconds for r in store.regions()) if store.schema_version >= 3 else 0.0
    rows: list[tuple[Any, ...]] = [
        ("store", str(store.path)),
        ("dsv version", meta.get("dsv_version", "?")),
        ("schema version", store.schema_version),
        ("config", f"{meta.get('config_source', '?')} [{meta.get('config_hash', '?')}]"),
        ("overrides", " ".join(meta.get("config_overrides") or []) or "none"),
        ("model", f"{meta.get('model', '?')} (weights fingerprint {meta.get('model_fingerprint', '?')})"),
        ("classes", len(meta.get("classes", []))),
        ("groups", meta.get("groups", 1)),
        ("created", meta.get("created", "not recorded (store written before dsv recorded it)")),
        ("synthesis time", f"{seconds:.1f} s (all groups and sessions)" if seconds else "not recorded"),
    ]
    if "base_test_accuracy" in meta:
        rows.append(("base model test accuracy", float(meta["base_test_accuracy"])))
    return _table(rows)


def _cards(images: np.ndarray, c: dict[str, np.ndarray], classes: list[str], top3: dict[str, list], order) -> str:
    """One card per candidate: the image, its target, lambda, and each verifier's top-3
    (``top3``: verifier name -> one list per candidate)."""
    out = []
    # photographs (ImageNet: 224 px) at their own size, to judge them; small images (8 to 32 px)
    # enlarged to 112 px with their pixels kept sharp
    size_class = " large" if images.shape[1] >= 100 else ""
    for i in order:
        alive = bool(c["alive"][i])
        lines = [
            f'<span class="rank">#{i}</span> target {html.escape(_title(classes, c["targets"][i]))}',
            f"λ = {float(c['lambda'][i]):.3g} · {'alive' if alive else 'dead'}",
        ]
        for verifier, guesses in top3.items():
            if i < len(guesses):
                named = ", ".join(f"{html.escape(str(n))} {p:.2f}" for n, p in guesses[i])
                lines.append(f"{html.escape(verifier)}: {named}")
        alt = f"candidate {i}"
        out.append(
            f'<div class="card{size_class}{"" if alive else " dead"}">{_img(_image_png(images[i]), alt=alt)}'
            + "<br>".join(lines)
            + "</div>"
        )
    return '<div class="cards">' + "".join(out) + "</div>"


def _verifier_top3(results: dict[str, Any]) -> dict[str, list]:
    """Each verifier's top-3 per candidate: every one of ``verifiers``, else the one ``verifier``."""
    many = results.get("verifiers") or {}
    if many:
        return {name: v["top3"] for name, v in many.items() if v.get("top3") is not None}
    one = results.get("verifier") or {}
    return {"verifier": one["top3"]} if one.get("top3") is not None else {}


def _history_plot(history: dict[str, np.ndarray]) -> str:
    plt = pyplot()
    it = history.get("iteration", np.arange(len(next(iter(history.values())))))
    names = [n for n in history if n not in ("iteration", "lambda")]
    panels = names + (["lambda"] if "lambda" in history else [])
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, panels):
        ax.axis("on")
        values = np.asarray(history[name])
        ax.plot(it, values, lw=0.8 if name == "lambda" else 1.4)
        label = {"stationarity": "stationarity (1.0 = λ of 0)", "lambda": "λ per candidate"}.get(name, name)
        ax.set_title(label, fontsize=10)
        if name == "stationarity":
            ax.axhline(1.0, color="#999", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
        ax.set_xlabel("iteration", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _lambda_accuracy_plot(result: dict[str, Any], classes: list[str], rho: Any) -> str:
    plt = pyplot()
    x, y = np.asarray(result["lambda_sum"]), np.asarray(result["test_accuracy"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(x, y)
    for k, (a, b) in enumerate(zip(x, y)):
        ax.annotate(classes[k] if k < len(classes) else str(k), (a, b), fontsize=7)
    ax.set_xlabel(f"sum of λ per class ({result.get('lambda_source', '?')})")
    ax.set_ylabel("class test accuracy")
    ax.set_title(f"Pearson ρ = {rho:.3f}" if isinstance(rho, float) else "ρ not computed", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _premise_section(store: RunStore, result: dict[str, Any]) -> str:
    """The premise measured by the select stage: its residual and facts, and each constraint's
    multiplier against its normalised margin (on the margin at 1)."""
    rows: list[tuple[Any, ...]] = [
        ("relative stationarity residual (0: a KKT point)", result.get("residual")),
        ("samples measured", result.get("n")),
        ("on the margin", f"{result.get('on_margin')} (normalised margin <= 1 + {result.get('tol')})"),
        ("non-zero λ", f"{result.get('nonzero_lambda')} of {result.get('constraints')} constraints"),
        ("samples with a non-zero λ", result.get("support")),
        ("λ off the margin", result.get("lambda_off_margin")),
        ("margin form", result.get("margin")),
        ("parameters", f"{result.get('params')} ({result.get('parameters')} scalars)"),
        ("misclassified", result.get("misclassified")),
        ("normalisation", result.get("normalisation")),
    ]
    parts = ["<h3>DeepKKT premise: is the model a KKT point?</h3>", _table(rows)]
    path = store.export_path(str(result.get("npz", ""))) if result.get("npz") else None
    if path is None or not path.is_file():
        return "".join(parts) + '<p class="muted">its per-sample arrays are not in the store</p>'
    with np.load(path, allow_pickle=False) as z:
        lambdas, margins = z["lambdas"].ravel(), z["margins"].ravel()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    top = float(lambdas.max()) if lambdas.size and lambdas.max() > 0 else 1.0
    ax.scatter(margins, lambdas / top, s=10, alpha=0.7)
    ax.axvline(1 + float(result.get("tol", 0.0)), color="#999", ls="--", lw=0.8)
    ax.set_xlabel("normalised margin (1: on the margin)")
    ax.set_ylabel("λ / max λ")
    ax.set_title(f"residual {float(result.get('residual', float('nan'))):.3g}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return "".join(parts) + _png(fig)


def _reconstruction_section(store: RunStore, r: dict[str, Any]) -> str:
    """The reconstruction stage: Haim et al.'s counts (training images matched by NCC, scored by
    SSIM) and its figure."""
    n = r.get("n")
    rows: list[tuple[Any, ...]] = [
        ("training images scored", n),
        ("candidates", f"{r.get('candidates')} ({r.get('candidate_set', 'all')})"),
        ("SSIM > 0.4", f"{r.get('count_04')} of {n}"),
        ("SSIM > 0.6", f"{r.get('count_06')} of {n}"),
        ("mean SSIM of the 10 best", r.get("top10_ssim")),
        ("mean SSIM", r.get("mean_ssim")),
    ]
    if "same_label" in r:
        rows.append(("matched a candidate of its own label", f"{r['same_label']} of {n}"))
    figure = _export_image(store, r["png"]) if r.get("png") else ""
    return "<h3>Reconstruction of the training images</h3>" + _table(rows) + figure


def _export_image(store: RunStore, name: str | None) -> str:
    path = store.path / "exports" / name if name else None
    if path is None or not path.is_file():
        return '<p class="muted">its image is not in the store</p>'
    return _img(path.read_bytes(), "plot", alt=name or "")


def _stage_results(store: RunStore, meta: dict[str, Any]) -> str:
    results = store.results
    config = meta.get("config") or {}
    classes = list(meta.get("classes", []))
    parts: list[str] = []
    rows: list[tuple[Any, ...]]
    shown = set()
    if "verifier" in results:
        v = results["verifier"]
        shown.add("verifier")
        parts.append(f"<h3>Verifier ({html.escape(str(v.get('model')))})</h3>")
        parts.append(
            _table(
                [("top-1", v.get("top1")), ("top-5", v.get("top5")), ("p(target)", v.get("p_target")),
                 ("candidates scored", v.get("n")), ("mixtures skipped", v.get("mixtures_skipped"))]
            )
        )  # fmt: skip
        rows = [
            (name, r["n"], float(r["top1"]), float(r["top5"]), ", ".join(map(str, r["predicted"])))
            for name, r in v.get("per_class", {}).items()
        ]
        parts.append(_table(rows, ("class", "n", "top-1", "top-5", "predicted")))
    if "retrained" in results:
        r = results["retrained"]
        shown.update({"retrained", "retrain"})
        parts.append("<h3>Retrained on the " + html.escape(str(r.get("source", "?"))) + "</h3>")
        rows = [("test accuracy", f"{r['mean']:.4f} ± {r['std']:.4f} over {r['seeds']} seeds")]
        rows += [(f"seed {i}", float(a)) for i, a in enumerate(r.get("accuracies", []))]
        rows.append(("training images", r.get("images", "?")))
        if "base_test_accuracy" in meta:
            rows.append(("baseline: the base model", float(meta["base_test_accuracy"])))
        for key, value in (results.get("baselines") or {}).items():
            rows.append((f"baseline: {key}", value))
        shown.add("baselines")
        parts.append(_table(rows))
    if "select" in results:
        s = results["select"]
        shown.add("select")
        parts.append("<h3>Coreset selection</h3>")
        rows = [(k, v if not isinstance(v, dict) else json.dumps(v)) for k, v in s.items()]
        parts.append(_table(rows))
    if "premise" in results:
        shown.add("premise")
        parts.append(_premise_section(store, results["premise"]))
    if "reconstruction" in results:
        shown.add("reconstruction")
        parts.append(_reconstruction_section(store, results["reconstruction"]))
    if "class_lambda_accuracy" in results:
        shown.update({"class_lambda_accuracy", "pearson_lambda_accuracy"})
        parts.append("<h3>Per-class λ against class accuracy</h3>")
        rho = results.get("pearson_lambda_accuracy")
        parts.append(_lambda_accuracy_plot(results["class_lambda_accuracy"], classes, rho))
    strip = (config.get("interpolate") or {}).get("png", "interpolation.png")
    if (store.path / "exports" / strip).is_file():
        shown.add("interpolation")
        parts.append("<h3>Interpolation strips</h3>" + _export_image(store, strip))
    if "edits" in results:
        shown.add("edits")
        parts.append("<h3>Edits (before, after)</h3>")
        edits = results["edits"]
        verifiers = list(dict.fromkeys(name for e in edits for name in e.get("verifiers") or {}))
        rows = [
            (
                e.get("image"),
                e.get("target"),
                e.get("before"),
                e.get("after"),
                *((e.get("verifiers") or {}).get(name, {}).get("top1", "") for name in verifiers),
                *((e["ssim"], "yes" if e.get("adversarial") else "no") if "ssim" in e else ()),
            )
            for e in edits
        ]
        scored = ("SSIM to the image", "adversarial") if any("ssim" in e for e in edits) else ()
        parts.append(_table(rows, ("image", "target", "model said before", "model says after", *verifiers, *scored)))
        parts.append(_export_image(store, (config.get("edit") or {}).get("png", "edits.png")))
    rest = {k: v for k, v in results.items() if k not in shown}
    if rest:
        parts.append("<h3>Other results</h3><pre>" + html.escape(json.dumps(rest, indent=2)) + "</pre>")
    return "".join(parts) or '<p class="muted">no stage after synthesis recorded a result</p>'


def render(store: RunStore) -> str:
    """The report of ``store`` as one HTML document."""
    meta = store.meta
    name = html.escape(str(meta.get("name", store.path.name)))
    finished, status = _status(store, meta)
    body = [f"<h1>{name}</h1><p class='muted'>Deep Support Vectors run report</p>"]
    body.append(f'<div class="banner {"ok" if finished else "warn"}">{html.escape(status)}</div>')
    summary = meta.get("summary") or {}
    facts = "<div><h2>Provenance</h2>" + _provenance(store, meta) + "</div>"
    if summary:
        facts += "<div><h2>Summary</h2>" + _table([(k, v) for k, v in summary.items()]) + "</div>"
    body.append(f'<div class="row">{facts}</div>')
    classes = list(meta.get("classes", []))
    if store.has_candidates:
        c = store.candidates()
        images = to_images(c["x"], meta["mean"], meta["std"])
        top3 = _verifier_top3(store.results)
        n = len(images)
        body.append(f"<h2>Candidates ({int(c['alive'].sum())} of {n} alive)</h2>")
        body.append(_cards(images, c, classes, top3, range(n)))
        ranked = sorted(range(n), key=lambda i: (not c["alive"][i], -float(c["lambda"][i])))
        body.append("<h2>Ranked by λ (alive first)</h2>" + _cards(images, c, classes, top3, ranked))
    history = store.history() if store.has_candidates else {}
    body.append("<h2>History</h2>")
    body.append(_history_plot(history) if history else '<p class="muted">no history committed yet</p>')
    body.append("<h2>Stage results</h2>" + _stage_results(store, meta))
    text = meta.get("config_text") or json.dumps(meta.get("config", {}), indent=2)
    body.append("<h2>Config</h2><pre>" + html.escape(str(text)) + "</pre>")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{CSP}'
        f"<title>{name}: dsv report</title><style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>"
    )


def write_report(store: RunStore, path: str | Path) -> Path:
    """Write :func:`render` of ``store`` to ``path`` (its folder must exist)."""
    path = Path(path)
    path.write_text(render(store), encoding="utf-8")
    return path
