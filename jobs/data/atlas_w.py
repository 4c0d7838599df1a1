"""`memq data atlas-w`: the model-defined atlas W (mem-spec 1.8), added to every subject's ROIs.

The per-voxel readout weights of all subjects in a whole-brain soup are clustered by cosine
k-means (k = 1000, at most 1000 iterations, tol 1e-6, seed 45510); the centroids' cosine-similarity
rows are merged by Ward linkage into exactly 9 clusters, the fcluster distance threshold found by
bisection (the reference's x0.5 / x1.5 search could oscillate; ``search="scale"`` runs it, switch
W_SEARCH of jobs/compat.py). Voxel v of a subject joins ROI
``w_c`` of its centroid's cluster c; an empty cluster is stored as an empty ROI. Each subject file
is replaced by a copy with the new ROIs, atomically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from jobs.compat import data_switch_values
from jobs.data.amend import rewrite
from jobs.data.inputs import reason
from jobs.data.layout import list_subjects, open_subject, subject_path
from jobs.data.params import ATLAS_W_SWITCHES
from jobs.data.progress import JobReporter, Reporter
from jobs.weights.state_dict import read_state_dict
from memq.job import SOUP_ARTIFACT, ChecksumError, JobContext, PermanentError, UserError, soup_path, verify

N_CENTROIDS = 1000
N_ROIS = 9
KMEANS_SEED = 45510
MAX_ITER = 1000
TOL = 1e-6
SOURCE_ATTR = "atlas_w_source"
_ASSIGN_ROWS = 32768  # rows of the similarity matrix computed at once
_BISECTION_STEPS = 200
SCALE_START = 20.0  # the reference's first fcluster threshold (xvbb_clustering.py)
_SCALE_STEPS = 10_000  # the reference's search has no limit; it can oscillate forever
_READOUT = re.compile(r"(?:.*\.)?readout\.(subj\d+)\.weight")


def readout_weights(state: Mapping[str, torch.Tensor], soup: Path) -> dict[str, torch.Tensor]:
    """{subject: [n_voxels, d] readout weights} of a soup's state dict (free voxel weights)."""
    found = {m.group(1): v for k, v in state.items() if (m := _READOUT.fullmatch(k)) and v.ndim == 2}
    if not found:
        raise UserError(
            "no per-voxel readout weights (readout.subjXX.weight, [n_voxels, d]) in this state dict",
            where=str(soup),
            hint="use a whole-brain soup of a model with free voxel weights (VOXEL_OUTS.SHARED.USE false)",
        )
    return dict(sorted(found.items()))


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cat([(part @ centroids.T).argmax(dim=1) for part in x.split(_ASSIGN_ROWS)])


def cosine_kmeans(
    x: torch.Tensor,
    k: int,
    seed: int = KMEANS_SEED,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    reporter: Reporter | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [n] and unit centroids [k, d] of k-means on the unit sphere (cosine similarity).

    Starts from k distinct random rows; a centroid that loses all its members stays where it was.
    Stops when the summed squared centroid shift is at most ``tol``.
    """
    reporter = reporter or Reporter()
    x = F.normalize(x.float(), dim=1)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    centroids = x[order[:k].to(x.device)].clone()
    with reporter.task("k-means iterations", max_iter) as advance:
        for step in range(1, max_iter + 1):
            labels = _assign(x, centroids)
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)[:, None]
            moved = torch.where(counts > 0, F.normalize(sums, dim=1), centroids)
            shift = float((moved - centroids).square().sum())
            centroids = moved
            advance(1)
            if shift <= tol:
                advance(max_iter - step)
                break
    return _assign(x, centroids), centroids


def ward_clusters(centroids: np.ndarray, n_clusters: int = N_ROIS, search: str = "bisect") -> np.ndarray:
    """Cluster (0..n_clusters-1) of each centroid: Ward linkage of the rows of their cosine-similarity
    matrix, cut at the fcluster distance threshold that gives exactly ``n_clusters``, by bisection
    (``search`` "scale": the reference's x1.5/x0.5 search from 20, switch W_SEARCH)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    tree = linkage(np.nan_to_num(unit @ unit.T), method="ward")

    def cut(threshold: float) -> np.ndarray:
        return fcluster(tree, threshold, criterion="distance")

    if search == "scale":
        return _scaled_cut(cut, n_clusters) - 1

    lo, hi = 0.0, float(tree[:, 2].max()) * 2 + 1.0  # count(lo) >= n_clusters > count(hi) = 1
    labels = cut(lo)
    for _ in range(_BISECTION_STEPS):
        count = labels.max()
        if count == n_clusters:
            return labels - 1
        mid = (lo + hi) / 2
        labels = cut(mid)
        if labels.max() > n_clusters:
            lo = mid
        elif labels.max() < n_clusters:
            hi = mid
    raise UserError(
        f"no fcluster threshold gives exactly {n_clusters} clusters of the {len(centroids)} centroids",
        hint="tied merge heights; try another --k",
    )


def _scaled_cut(cut: Callable[[float], np.ndarray], n_clusters: int) -> np.ndarray:
    """The reference's search: threshold 20, x1.5 while there are too many clusters, x0.5 while
    too few. Raises UserError where it would loop forever (it can oscillate)."""
    threshold = SCALE_START
    for _ in range(_SCALE_STEPS):
        labels = cut(threshold)
        count = labels.max()
        if count == n_clusters:
            return labels
        threshold *= 1.5 if count > n_clusters else 0.5
    raise UserError(
        f"the reference's x1.5/x0.5 search found no threshold for exactly {n_clusters} clusters in "
        f"{_SCALE_STEPS} steps",
        hint="use --w-search bisect",
    )


def _source(soup: Path, k: int, seed: int, search: str) -> str:
    from memq.job import sha256_file

    # the default search is left out, so atlases written before the switch existed stay current
    return f"soup sha256 {sha256_file(soup)}, k={k}, seed={seed}" + (f", search={search}" if search != "bisect" else "")


def _write(path: Path, rois: dict[str, np.ndarray], source: str) -> None:
    def edit(f: h5py.File) -> None:
        for name in [n for n in f["rois"] if n.startswith("w_")]:
            del f["rois"][name]
        for name, positions in rois.items():
            f["rois"].create_dataset(name, data=positions.astype(np.int64))
        f.attrs[SOURCE_ATTR] = source

    rewrite(path, edit)


def atlas_w(
    data_dir: Path,
    soup: Path,
    *,
    k: int = N_CENTROIDS,
    seed: int = KMEANS_SEED,
    device: str | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    search: str = "bisect",
) -> list[str]:
    """Add ROIs w_1..w_9 to every subject of ``data_dir``; returns the subjects rewritten.
    ``search``: how the cluster-count threshold is found (bisect, or the reference's scale)."""
    reporter = reporter or Reporter()
    subjects = list_subjects(data_dir)
    if not subjects:
        raise UserError("no prepared subject here", where=str(data_dir))
    if not soup.is_file():
        raise UserError("missing soup file", where=str(soup))
    source = _source(soup, k, seed, search)
    todo = []
    for subject in subjects:
        with open_subject(subject_path(data_dir, subject)) as f:
            if force or f.file.attrs.get(SOURCE_ATTR) != source:
                todo.append(subject)
    if not todo:
        reporter.note(f"every subject already has atlas W from this soup ({source}), skipped")
        return []
    try:
        weights = readout_weights(read_state_dict(str(soup), "--from-soup"), soup)
    except (RuntimeError, ValueError, OSError) as exc:
        raise UserError(f"not a readable state dict ({reason(exc)})", where=str(soup)) from exc
    if list(weights) != subjects:
        raise UserError(
            f"the soup has readout weights for {', '.join(weights)}, the data for {', '.join(subjects)}",
            where=str(soup),
            hint="cluster with a soup trained on exactly the prepared subjects",
        )
    for subject, w in weights.items():
        with open_subject(subject_path(data_dir, subject)) as f:
            if w.shape[0] != f.n_voxels:
                raise UserError(f"{subject}: {w.shape[0]} readout rows, but {f.n_voxels} voxels", where=str(soup))
    x = torch.cat(list(weights.values())).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if x.shape[0] < max(k, N_ROIS):
        raise UserError(f"k={k} centroids need at least {k} voxels, there are {x.shape[0]}", hint="use a smaller --k")
    voxel_centroid, centroids = cosine_kmeans(x, k, seed=seed, reporter=reporter)
    cluster = ward_clusters(centroids.double().cpu().numpy(), search=search)[voxel_centroid.cpu().numpy()]
    start = 0
    for subject, w in weights.items():
        mine = cluster[start : start + w.shape[0]]
        start += w.shape[0]
        if subject in todo:
            rois = {f"w_{c + 1}": np.flatnonzero(mine == c) for c in range(N_ROIS)}
            _write(subject_path(data_dir, subject), rois, source)
            sizes = " ".join(str(r.size) for r in rois.values())
            reporter.note(f"{subject}: atlas W written (voxels per ROI: {sizes})")
    return todo


def run(ctx: JobContext) -> None:
    """Job kind ``data.atlas_w``: atlas W from the soup of a whole-brain job (``source_job``, by id
    or key, and ``recipe``), its registered sha256 checked first; or from a ``soup`` file."""
    p = ctx.params
    soup = Path(p["soup"]) if p.get("soup") else _registered_soup(ctx, p["source_job"], p.get("recipe", "uniform"))
    atlas_w(Path(p["data_dir"]), soup, k=int(p.get("k", N_CENTROIDS)), seed=int(p.get("seed", KMEANS_SEED)),
            device=p.get("device"), force=bool(p.get("force", False)), reporter=JobReporter(ctx),
            search=data_switch_values(p, ATLAS_W_SWITCHES)["W_SEARCH"])


def _registered_soup(ctx: JobContext, source: int | str, recipe: str) -> Path:
    job = ctx.succeeded_job(source)
    path = soup_path(ctx.root, job["grid"], job["id"], recipe)
    found = [row for row in ctx.checkpoints([job["id"]], kind=SOUP_ARTIFACT) if row["path"] == str(path)]
    if not found:
        raise PermanentError(f"job {job['id']} has no {recipe} soup (a mem.soup job makes it first)")
    try:
        verify(path, found[0]["size"], found[0]["sha256"])
    except ChecksumError as exc:
        raise PermanentError(str(exc)) from None
    return path
