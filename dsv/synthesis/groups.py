"""Candidate groups: the unit a synthesis is split into, and the unit ranks share.

The paper optimizes DSVs in batches; with ``synthesis.groups = G`` the N candidates are split
into G contiguous groups and each group is optimized on its own (its stationarity term, and every
other batch term, sees only that group's candidates). A group's result depends only on the config
and its index (its RNG seed is derived from both), never on which process ran it or what that
process ran before: N ranks, or one rank running the groups in turn, write the same arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsv.errors import ConfigError


def group_slices(candidates: int, groups: int, *, source: str = "synthesis") -> list[slice]:
    """The G contiguous index ranges of ``candidates`` (sizes differ by at most one, larger first)."""
    if not 1 <= groups <= candidates:
        raise ConfigError(
            f"{source}: synthesis.groups: {groups} groups for {candidates} candidates; choose 1 to {candidates}"
        )
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(candidates), groups)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def group_seed(seed: int, group: int) -> int:
    """The seed of one group: ``seed`` itself for group 0 (so one group is the ungrouped run),
    otherwise a value derived from (seed, group) that does not depend on the rank count."""
    if group == 0:
        return seed
    return int(np.random.SeedSequence([seed, group]).generate_state(1, dtype=np.uint32)[0])


def owned_groups(groups: int, rank: int, world_size: int) -> list[int]:
    """The groups rank ``rank`` of ``world_size`` runs, round-robin (rank r: r, r + W, ...)."""
    return list(range(rank, groups, world_size))


SUMMED = ("candidates", "alive", "classified_as_target")  # counts: the run's is the sum of the groups'


def combine_summaries(parts: list[dict], sizes: list[int]) -> dict:
    """The groups' run summaries as one: counts summed, ``iterations`` the fewest, every other
    number the mean weighted by group size, anything else group 0's."""
    out = dict(parts[0])
    weights = np.asarray(sizes, dtype=np.float64) / float(sum(sizes))
    for key, _value in parts[0].items():
        values: list[Any] = [p.get(key) for p in parts]
        if key in SUMMED:
            out[key] = int(sum(values))
        elif key == "iterations":
            out[key] = int(min(values))
        elif all(isinstance(v, float) for v in values):
            out[key] = float(np.dot(weights, values))
    return out
