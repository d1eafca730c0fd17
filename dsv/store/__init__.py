"""The Zarr run store (:mod:`dsv.store.run_store`), its checkpoint helpers
(:mod:`dsv.store.checkpoint`), checks (:mod:`dsv.store.verify`), summary, metadata and exports."""

from dsv.store import lock
from dsv.store.run_store import (
    SCHEMA_VERSION,
    Region,
    RunStore,
    combine_histories,
    concatenate_candidates,
    is_half_created,
    is_store,
    remove_store,
)
from dsv.store.summary import run_summary, summary

__all__ = [
    "SCHEMA_VERSION",
    "Region",
    "RunStore",
    "combine_histories",
    "concatenate_candidates",
    "is_half_created",
    "is_store",
    "lock",
    "remove_store",
    "run_summary",
    "summary",
]
