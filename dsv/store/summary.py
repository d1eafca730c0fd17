"""The run summary: the keys of ``dsv-pipeline show --json``, built one way for a store, a region
of one and a run kept in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsv.store.run_store import RunStore


def run_summary(
    base: Mapping[str, Any], entropy: Sequence[float] | np.ndarray | None, iterations: int, config_hash: str | None
) -> dict[str, Any]:
    """``base`` (the summary a run wrote) plus the first and last mean entropy, the committed
    iteration count and the config hash."""
    start, end = (float(entropy[0]), float(entropy[-1])) if entropy is not None and len(entropy) > 0 else (None, None)
    return {
        **base,
        "entropy_start": start,
        "entropy_end": end,
        "iterations": int(iterations),
        "config_hash": config_hash,
    }


def summary(store: RunStore) -> dict[str, Any]:
    """The ``show --json`` contract of a store: its run summary and every stage result."""
    meta = store.meta
    out = run_summary(
        meta.get("summary", {}),
        store.history().get("entropy"),
        meta.get("committed_iteration", 0),
        meta.get("config_hash"),
    )
    if "base_model" in meta:  # the train stage's record: training accuracy and loss, test accuracy, epochs
        out["base_model"] = meta["base_model"]
    out.update(store.results)  # e.g. verifier, pearson_lambda_accuracy, retrained accuracies
    if "candidates" not in out and store.has_candidates:
        c = store.candidates()
        out["candidates"] = int(len(c["alive"]))
        out["alive"] = int(c["alive"].sum())
    return out
