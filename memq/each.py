"""Groups split into store sub-groups that wait for single jobs: ``each:`` and ``after: {group, match}``.

    - name: soup
      kind: mem.soup
      each: [all, A]            # groups above this one
      params: {recipe: uniform}
    - name: predict
      kind: mem.predict
      each: soup                # one job per soup job and split
      grid: {split: [predict, val2]}
    - name: finetune
      grid: {subj: [1, 2], sessions: [1, 40]}
      after: [{group: pretrain, match: [subj]}]   # subj=2 waits for the jobs of pretrain with subj=2

``each: G``: a job made for job J of group G gets the param ``source_job``: J's key, or, when G is
itself an ``each`` group, the ``source_job`` J got (so a chain of stages always names the job it
started from). Its group is ``<name>.<first 10 hex of J's key>``, which waits for J alone.

``after: [{group: G, match: [p, q]}]``: a job waits for the jobs of G (every repeat) whose params p
and q equal its own (as canonical JSON). Its group is ``<name>.<10 hex>`` of the followed job's key
(with ``each:``) and the matched values, one sub-group per such combination, which waits for the
followed job and the matched jobs (the store's group_job_deps) besides the group's plain ``after``.

``after: [soup]`` elsewhere waits for every sub-group of ``soup``. Names and keys depend on the grid
only, so a resubmit finds the same jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memq.spec import GroupSpec, JobSpec, canonical_json

SOURCE_PARAM = "source_job"
KEY_PREFIX = 10

Values = tuple[str, ...]  # matched params' values as canonical JSON, in the order of `match:`


@dataclass(frozen=True)
class Match:
    """One ``after: {group, match}`` item of a group: the keys of the named group's jobs by the
    values of the matched params."""

    group: str
    params: tuple[str, ...]
    keys: dict[Values, tuple[str, ...]]

    @classmethod
    def of(cls, group: str, params: Sequence[str], jobs: Sequence[JobSpec]) -> Match:
        keys: dict[Values, list[str]] = {}
        for job in jobs:
            keys.setdefault(values_of(job.params, params), []).append(job.key)
        return cls(group, tuple(params), {values: tuple(found) for values, found in keys.items()})


def values_of(params: dict[str, Any], names: Sequence[str]) -> Values:
    return tuple(canonical_json(params[name]) for name in names)


@dataclass
class Expanded:
    """What the groups above the one being expanded became: their jobs and store groups."""

    jobs: dict[str, list[JobSpec]] = field(default_factory=dict)  # grid-file group -> its jobs
    # a split grid-file group -> its store sub-groups -> the keys of the jobs each waits for
    splits: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)  # a follower's key -> its source_job

    def followed(self, names: list[str]) -> list[JobSpec]:
        return [job for name in names for job in self.jobs[name]]

    def root_key(self, job: JobSpec) -> str:
        """The job a chain of ``each`` stages started from."""
        return self.roots.get(job.key, job.key)

    def place(self, name: str, leader: JobSpec | None, matched: Sequence[tuple[Match, Values]]) -> str:
        """The store group of a job of grid-file group ``name`` that follows ``leader`` (``each:``)
        and has the ``matched`` values; a sub-group is recorded with the jobs it waits for."""
        if not matched:
            if leader is None:
                return name
            suffix = leader.key
        else:
            identity = [None if leader is None else leader.key,
                        [[m.group, dict(zip(m.params, values, strict=True))] for m, values in matched]]
            suffix = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
        store_group = f"{name}.{suffix[:KEY_PREFIX]}"
        waits = [*([] if leader is None else [leader.key]), *(key for m, values in matched for key in m.keys[values])]
        self.splits.setdefault(name, {})[store_group] = tuple(dict.fromkeys(waits))
        return store_group

    def store_groups(self, name: str) -> list[str]:
        """The store groups a grid-file group became."""
        return list(self.splits[name]) if name in self.splits else [name]

    def group_specs(self, name: str, after: Sequence[object]) -> list[GroupSpec]:
        """The grid-file group's store groups; the group names in its ``after`` (its matches are job
        dependencies, placed already) resolved to store groups."""
        waits = tuple(g for dep in after if isinstance(dep, str) for g in self.store_groups(dep))
        if name not in self.splits:
            return [GroupSpec(name, waits)]
        return [GroupSpec(group, waits, keys) for group, keys in self.splits[name].items()]

