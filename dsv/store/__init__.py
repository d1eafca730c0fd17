"""The Zarr run store (:mod:`dsv.store.run_store`; one group's region: :mod:`dsv.store.region`;
what lies at a store path: :mod:`dsv.store.folders`), its checkpoint helpers
(:mod:`dsv.store.checkpoint`), checks (:mod:`dsv.store.verify`), summary, metadata and exports."""

from dsv.store import lock
from dsv.store.folders import is_half_created, is_store, remove_store
from dsv.store.region import Region
from dsv.store.run_store import SCHEMA_VERSION, RunStore, combine_histories, concatenate_candidates
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
