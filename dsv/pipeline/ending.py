"""The few lines ``dsv-pipeline run`` and ``resume`` end with: what ran, how many candidates
survived and hit their target, what each independent classifier said, the time, and where the
grid, the report and the store are. The whole summary stays one ``--json`` (or ``show --json``)
away; this is what a person reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: at most this many lines, whatever the stages wrote
MAX_LINES = 15
#: verifiers and written files listed one per line; more are counted on one line
MAX_VERIFIERS = 4
MAX_FILES = 4


def duration(seconds: float) -> str:
    """``'3 min 25 s'``, ``'42 s'``, ``'1 h 02 min'``, ``'0.8 s'``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _verifier_lines(summary: dict[str, Any]) -> list[str]:
    verifiers = summary.get("verifiers") or (
        {summary["verifier"].get("model", "verifier"): summary["verifier"]} if summary.get("verifier") else {}
    )
    lines = []
    for name, v in list(verifiers.items())[:MAX_VERIFIERS]:
        lines.append(
            f"{name} says: top-1 {_ratio(v.get('top1'))}, top-5 {_ratio(v.get('top5'))}, "
            f"mean p(target) {_ratio(v.get('p_target'))} over {v.get('n', '?')} images"
        )
    if len(verifiers) > MAX_VERIFIERS:
        lines.append(f"and {len(verifiers) - MAX_VERIFIERS} more verifiers (dsv-pipeline show --json)")
    return lines


def _file_lines(store: Path, exports: list[Path]) -> list[str]:
    grids = [p for p in exports if p.suffix == ".png"]
    reports = [p for p in exports if p.suffix == ".html"]
    others = [p for p in exports if p not in grids and p not in reports]
    # the export stage's candidate grid by its usual name; other pictures (a strip, an edit, the
    # reconstruction pairs) as images
    lines = [f"{'grid:' if 'grid' in p.stem else 'image:':<8}{p}" for p in grids]
    lines += [f"report: {p}" for p in reports] or [f"report: dsv-pipeline report {store}"]
    lines += [f"wrote:  {p}" for p in others]
    if len(lines) > MAX_FILES + 1:
        hidden = len(lines) - MAX_FILES
        lines = lines[:MAX_FILES] + [f"and {hidden} more files in {store / 'exports'}"]
    return lines


def ending_lines(
    summary: dict[str, Any],
    *,
    store: Path,
    exports: list[Path],
    seconds: float,
    name: str = "",
    stages: list[str] | None = None,
    source: str = "",
) -> list[str]:
    """The human summary of a finished run (at most :data:`MAX_LINES` lines)."""
    ran = ", ".join(stages or []) or "the pipeline"
    origin = f" of {source}" if source else ""
    lines = [f"{name or 'run'}: {ran}{origin}, done in {duration(seconds)}"]
    if summary.get("candidates") is not None:
        on_target = summary.get("classified_as_target")
        lines.append(
            f"candidates: {summary['candidates']}, alive {summary.get('alive', '?')}"
            + (f", on target {on_target} (the model's top-1)" if on_target is not None else "")
            + (f", after {summary['iterations']} iterations" if summary.get("iterations") else "")
        )
    base = summary.get("base_model")
    if isinstance(base, dict) and base.get("test_accuracy") is not None:
        lines.append(f"base model: test accuracy {base['test_accuracy']:.3f}")
    lines += _verifier_lines(summary)
    retrained = summary.get("retrained")
    if isinstance(retrained, dict) and retrained.get("mean") is not None:
        seeds = len(retrained.get("accuracies", [])) or "?"
        lines.append(
            f"retrained on {retrained.get('images', '?')} images: test accuracy {retrained['mean']:.3f}"
            f" ± {retrained.get('std', 0.0):.3f} over {seeds} seeds"
        )
    lines += _file_lines(store, exports)
    lines.append(f"store:  {store}  (dsv-pipeline show {store} [--json] for everything)")
    return lines[:MAX_LINES]
