"""Groups with ``each:``: one job per job of other groups, each waiting for its own job only.

    - name: soup
      kind: mem.soup
      each: [all, A]            # groups above this one
      params: {recipe: uniform}
    - name: predict
      kind: mem.predict
      each: soup                # one job per soup job and split
      grid: {split: [predict, val2]}

A job made for job J of group G gets the param ``source_job``: J's key, or, when G is itself an
``each`` group, the ``source_job`` J got (so a chain of stages always names the job it started from).
Its group is ``<name>.<first 10 hex of J's key>``, which waits for J alone (the store's
group_job_deps) besides the group's own ``after``; ``after: [soup]`` elsewhere waits for every such
group. The names and keys depend on J's key only, so a resubmit finds the same jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memq.spec import GroupSpec, JobSpec

SOURCE_PARAM = "source_job"
KEY_PREFIX = 10


@dataclass
class Expanded:
    """What the groups above the one being expanded became: their jobs and store groups."""

    jobs: dict[str, list[JobSpec]] = field(default_factory=dict)  # grid-file group -> its jobs
    sources: dict[str, list[JobSpec]] = field(default_factory=dict)  # `each` group -> the jobs it follows
    roots: dict[str, str] = field(default_factory=dict)  # a follower's key -> its source_job

    def followed(self, names: list[str]) -> list[JobSpec]:
        return [job for name in names for job in self.jobs[name]]

    def root_key(self, job: JobSpec) -> str:
        """The job a chain of ``each`` stages started from."""
        return self.roots.get(job.key, job.key)

    def store_groups(self, name: str) -> list[str]:
        """The store groups a grid-file group became."""
        if name in self.sources:
            return [subgroup(name, job) for job in self.sources[name]]
        return [name]

    def group_specs(self, name: str, after: list[str]) -> list[GroupSpec]:
        """The grid-file group's store groups, ``after`` resolved to store groups."""
        waits = tuple(g for dep in after for g in self.store_groups(dep))
        if name not in self.sources:
            return [GroupSpec(name, waits)]
        return [GroupSpec(subgroup(name, job), waits, (job.key,)) for job in self.sources[name]]


def subgroup(name: str, source: JobSpec) -> str:
    return f"{name}.{source.key[:KEY_PREFIX]}"
