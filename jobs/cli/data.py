"""`memq data`: turn NSD + Algonauts 2023, or the MindEye2 release, into the training layout.

This module is imported at every `memq` start: it imports typer only; each command imports
what it needs. Bad inputs raise memq's UserError (one line, exit 2); `check` exits 1 on problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Prepare training data: NSD + Algonauts 2023 or MindEye2 into the HDF5 layout, pretrained weights, "
    "memory features, atlas W, checks, synthetic data.",
    no_args_is_help=True,
)

Force = Annotated[bool, typer.Option("--force", help="Redo work whose output is already complete.")]
Subjects = Annotated[
    str | None, typer.Option("--subjects", help="Comma-separated subjects, e.g. 1,2 or subj01 (default: all found).")
]
WithImages = Annotated[
    bool, typer.Option("--images/--no-images", help="Also write images.h5 for the prepared subjects.")
]
Compat = Annotated[
    str | None,
    typer.Option(
        "--compat", help="memq (default) or reference: the reference code's behaviour for every switch (COMPAT.md)."
    ),
]
NcSearch = Annotated[
    str | None, typer.Option("--nc-search", help="Noise-ceiling threshold search: bisect, or scale (reference).")
]
ImageJpeg = Annotated[
    str | None, typer.Option("--image-jpeg", help="none, or q95: a JPEG round trip at quality 95 (reference).")
]
WSearch = Annotated[
    str | None, typer.Option("--w-search", help="Cluster-count threshold search: bisect, or scale (reference).")
]


def _switches(names: tuple[str, ...], **options: str | None) -> dict[str, str]:
    """Effective data switches (jobs/compat.py) of a command's --compat and per-switch options."""
    from jobs.compat import data_switch_values
    from memq.job import UserError

    try:
        return data_switch_values(options, names)
    except ValueError as exc:
        raise UserError(str(exc), hint="see jobs/mem/COMPAT.md") from exc


def _console():  # type: ignore[no-untyped-def]
    from jobs.data.progress import ConsoleReporter

    return ConsoleReporter()


@app.command("prepare-nsd")
def prepare_nsd(
    nsd_dir: Annotated[Path, typer.Option("--nsd-dir", help="The NSD download (nsddata/, nsddata_betas/).")],
    alg_dir: Annotated[Path, typer.Option("--alg-dir", help="The Algonauts 2023 challenge data (subj01/ ...).")],
    out: Annotated[Path, typer.Option("--out", help="The prepared-data directory.")],
    space: Annotated[
        str, typer.Option("--space", help="fsaverage, func1mm_hip or fship (jobs/data/FORMAT.md).")
    ] = "fsaverage",
    beta: Annotated[str, typer.Option("--beta", help="b3 (betas_fithrf_GLMdenoise_RR) or b2 (betas_fithrf).")] = "b3",
    subjects: Subjects = None,
    fsaverage_dir: Annotated[
        Path | None,
        typer.Option(
            "--fsaverage-dir", help="FreeSurfer fsaverage subject (default: NSD's nsddata/freesurfer/fsaverage)."
        ),
    ] = None,
    images: WithImages = True,
    image_size: Annotated[int, typer.Option("--image-size", help="Stored image size.")] = 224,
    force: Force = False,
    compat: Compat = None,
    nc_search: NcSearch = None,
    image_jpeg: ImageJpeg = None,
) -> None:
    """One subjXX.h5 (subjXX.SPACE.h5) per subject (skipping complete ones), then images.h5 from the Algonauts PNGs."""
    from jobs.data.inputs import subject_list
    from jobs.data.nsd import NsdSources, available_subjects, prepare_subject
    from jobs.data.nsd_images import write_nsd_images

    switches = _switches(("NC_SEARCH", "IMAGE_JPEG"), compat=compat, nc_search=nc_search, image_jpeg=image_jpeg)
    reporter = _console()
    for subject in subject_list(subjects) or available_subjects(nsd_dir):
        src = NsdSources(
            nsd_dir, alg_dir, subject, space=space, beta=beta, fsaverage_dir=fsaverage_dir,
            nc_search=switches["NC_SEARCH"],
        )  # fmt: skip
        prepare_subject(src, out, force=force, reporter=reporter)
    if images:
        write_nsd_images(
            out, alg_dir, image_size=image_size, force=force, reporter=reporter, image_jpeg=switches["IMAGE_JPEG"]
        )


@app.command("import-mindeye2")
def import_mindeye2(
    src: Annotated[Path, typer.Option("--src", help="The MindEye2 release (betas_all_*.hdf5, coco_images_*, wds/).")],
    out: Annotated[Path, typer.Option("--out", help="The prepared-data directory.")],
    nsd_dir: Annotated[
        Path, typer.Option("--nsd-dir", help="The NSD download: nsd_expdesign.mat, func1pt8mm ROIs, responses.tsv.")
    ],
    subjects: Subjects = None,
    images: WithImages = True,
    force: Force = False,
) -> None:
    """Map the MindEye2 release onto the layout; says what the release cannot give and what replaces it."""
    from jobs.data.inputs import subject_list
    from jobs.data.mindeye2 import LIMITS, MindEye2Sources, available_subjects, import_subject, write_mindeye2_images
    from memq.job import UserError

    reporter = _console()
    reporter.note(LIMITS)
    names = subject_list(subjects) or available_subjects(src)
    if not names:
        raise UserError("no betas_all_subjXX_fp32_renorm.hdf5 here", where=str(src))
    for subject in names:
        import_subject(MindEye2Sources(src, nsd_dir, subject), out, force=force, reporter=reporter)
    if images:
        write_mindeye2_images(src, out, force=force, reporter=reporter)


def _root(ctx: typer.Context) -> Path:
    """The memq root of `memq --root` or MEMQ_ROOT (where the weights are installed)."""
    from memq.job import command_root

    return command_root(ctx)


@app.command()
def weights(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Names to install (default: dinov2_vitb14, dinov2_vits14 and dinov2_vitl14).",
                       show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Install this local file (safetensors, or a torch state dict) as the one NAME."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="The timm model of a NAME that is not one of the three.")
    ] = None,
) -> None:
    """Put pretrained backbone weights on the shared root once, with their sha256: from the Hugging Face
    cache (downloaded into it if the hub is reachable) or a local --file. Grids then name them."""
    from jobs.weights.install import install
    from jobs.weights.manifest import CATALOGUE, read_manifest
    from memq.job import UserError

    root, chosen = _root(ctx), names or list(CATALOGUE)
    if file is not None and len(chosen) != 1:
        raise UserError("--file installs one name", where="--file", hint="memq data weights NAME --file FILE")
    reporter = _console()
    for name in chosen:
        install(root, name, file=file, model=model, reporter=reporter)
    for name, entry in read_manifest(root).items():
        typer.echo(f"{name}: {entry.model}, {entry.size / 1e6:.1f} MB, sha256 {entry.sha256} ({entry.source})")


@app.command("cache-features")
def cache_features(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="The prepared-data directory (its images.h5).")],
    weights: Annotated[
        str,
        typer.Option("--weights", help="Installed weights (`memq data weights`), or `random` (tests only)."),
    ] = "dinov2_vitl14",
    model: Annotated[str, typer.Option("--model", help="timm model name.")] = "vit_large_patch14_dinov2.lvd142m",
    image_size: Annotated[int, typer.Option("--image-size", help="Model input size.")] = 224,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cpu, ... (default: cuda if present).")] = None,
    alg_dir: Annotated[
        Path | None, typer.Option("--alg-dir", help="Write images.h5 from these Algonauts PNGs first if it is missing.")
    ] = None,
    force: Force = False,
    compat: Compat = None,
    image_jpeg: ImageJpeg = None,
) -> None:
    """The memory-image features in images.h5 (resumes a killed run)."""
    from jobs.data.features import cache_features as run
    from jobs.weights.manifest import RANDOM

    switches = _switches(("IMAGE_JPEG",), compat=compat, image_jpeg=image_jpeg)
    run(
        data_dir,
        weights=weights,
        root=None if weights == RANDOM else _root(ctx),
        model_name=model,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
        alg_dir=alg_dir,
        force=force,
        reporter=_console(),
        image_jpeg=switches["IMAGE_JPEG"],
    )


@app.command("atlas-w")
def atlas_w(
    data_dir: Annotated[Path, typer.Argument(help="The prepared-data directory.")],
    soup: Annotated[Path, typer.Option("--from-soup", help="Whole-brain soup (state dict) with readout weights.")],
    k: Annotated[int, typer.Option("--k", help="k-means centroids.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="k-means seed.")] = 45510,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cpu, ... (default: cuda if present).")] = None,
    force: Force = False,
    compat: Compat = None,
    w_search: WSearch = None,
) -> None:
    """Add the model-defined atlas W (ROIs w_1..w_9) to every subject."""
    from jobs.data.atlas_w import atlas_w as run

    search = _switches(("W_SEARCH",), compat=compat, w_search=w_search)["W_SEARCH"]
    run(data_dir, soup, k=k, seed=seed, device=device, force=force, reporter=_console(), search=search)


@app.command()
def check(data_dir: Annotated[Path, typer.Argument(help="The prepared-data directory.")]) -> None:
    """Validate a prepared directory; exit code 1 when something is wrong."""
    from jobs.data.check import check_dir

    reports = check_dir(data_dir, _console())
    n_problems = 0
    for report in reports:
        status = "ok" if not report.problems else "PROBLEM"
        typer.echo(f"{report.name}: {status}: {'; '.join(report.facts) or '-'}")
        for problem in report.problems:
            typer.echo(f"{report.name}: PROBLEM: {problem}")
        n_problems += len(report.problems)
    typer.echo(f"{data_dir}: {n_problems} problem{'s' * (n_problems != 1)}" if n_problems else f"{data_dir}: ok")
    if n_problems:
        raise typer.Exit(1)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="The directory to write.")],
    subjects: Annotated[int, typer.Option("--subjects", help="Number of subjects.")] = 2,
    sessions: Annotated[int, typer.Option("--sessions", help="Sessions per subject.")] = 4,
    voxels: Annotated[str, typer.Option("--voxels", help="One voxel count, or one per subject (a,b,...).")] = "300,240",
    image_size: Annotated[int, typer.Option("--image-size", help="Image size.")] = 32,
    feature_dim: Annotated[int, typer.Option("--feature-dim", help="Memory-feature width.")] = 16,
    noise: Annotated[float, typer.Option("--noise", help="Noise standard deviation (sets the ceiling).")] = 1.0,
    predict_sessions: Annotated[int, typer.Option("--predict-sessions", help="Held-out sessions.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Synthetic prepared data with a planted ground truth (synth_truth.h5) and a test truth for `memq score`
    (truth/)."""
    from jobs.data.synth import synthesize
    from memq.job import UserError

    try:
        counts = [int(v) for v in voxels.split(",")]
        info = synthesize(
            out,
            n_subjects=subjects,
            n_sessions=sessions,
            n_voxels=counts[0] if len(counts) == 1 else counts,
            image_size=image_size,
            feature_dim=feature_dim,
            noise=noise,
            n_predict_sessions=predict_sessions,
            seed=seed,
            progress=True,
        )
    except ValueError as exc:
        raise UserError(str(exc), hint="see `memq data synth --help`") from exc
    typer.echo(
        f"wrote {', '.join(info.subjects)} to {info.data_dir}: noise {info.noise}, "
        f"mean r ceiling {info.r_ceiling_mean:.3f}"
    )
