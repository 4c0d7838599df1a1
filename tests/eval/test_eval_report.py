"""`memq report` on a real root: a store with jobs whose attempts hold Lightning CSV logs, an ensemble
output with a submission and scores.json, and the synthetic truth; the page rendered by Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from jobs.data.layout import open_subject
from jobs.data.synth import SynthInfo
from jobs.eval.logs import VAL_COLUMN, val_curve
from jobs.eval.surface import FS5_VERTICES, FS7_VERTICES, challenge_vertices, fsaverage5_mean
from memq.options import RootOptions
from memq.paths import job_dir
from memq.root import open_store
from memq.spec import GridSpec, GroupSpec, JobSpec
from memq.store.types import Capacity, Outcome

from .conftest import planted_test_signal, write_submission

GRID = "evalgrid"
PNGS = ("curves.png", "schemes.png", "scores.png", "surface.png")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
]  # fmt: skip


def write_metrics(attempt_dir: Path, values: dict[int, float]) -> None:
    """metrics.csv as Lightning's CSVLogger writes it: a training row and a validation row per epoch."""
    path = attempt_dir / "logs" / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    lines = [f"epoch,step,TRAIN/loss,{VAL_COLUMN},VAL/PearsonCorrCoef/subj01"]
    for epoch, value in values.items():
        lines += [f"{epoch},{10 * epoch + 4},0.93,,", f"{epoch},{10 * epoch + 9},,{value},{value + 0.01}"]
    path.write_text("\n".join(lines) + "\n")


# what each job's attempts log: job id -> attempt -> epoch -> val r (job 1 resumes at epoch 2 in attempt 2)
LOGS = {
    1: {1: {0: 0.10, 1: 0.15, 2: 0.18}, 2: {2: 0.20, 3: 0.24, 4: 0.26}},
    2: {1: {0: 0.12, 1: 0.19, 2: 0.23}},
    3: {1: {0: 0.05, 1: 0.08}},
    4: {1: {0: 0.07, 1: 0.11, 2: 0.12}},
}


def build_root(root: Path, data_dir: Path) -> None:
    """Jobs 1-2 (group all), 3-5 (group A, ROIs E V L) run to success, job 5 without logs; job 6 stays queued."""
    params = {"DATASET.DIR": str(data_dir)}
    jobs = [JobSpec(GRID, "all", "mem.train", params, repeat=r) for r in range(2)]
    jobs += [JobSpec(GRID, "A", "mem.train", {**params, "DATASET.ROIS": [roi]}) for roi in ("E", "V", "L")]
    groups = (GroupSpec("all"), GroupSpec("A"))
    store = open_store(RootOptions(root=str(root), db_mode="local"), create=True)
    store.submit(GridSpec(GRID, groups, tuple(jobs)))
    worker = store.register_worker("w", "host", os.getpid(), "boot", [], 1, 30.0)
    while (claim := store.claim(worker, Capacity(slots=1))[1]) is not None:
        logged = LOGS.get(claim.job_id, {}).get(claim.attempt)
        if logged:
            write_metrics(job_dir(root, GRID, claim.job_id, claim.attempt), logged)
        failed = claim.job_id == 1 and claim.attempt == 1
        metrics = {"val_pearson": max(logged.values()) if logged else None, "epochs": len(logged or {})}
        store.finish(Outcome(claim.job_id, claim.attempt, "failed" if failed else "succeeded", 1 if failed else 0,
                             metrics=metrics))  # fmt: skip
    store.submit(GridSpec(GRID, groups, (*jobs, JobSpec(GRID, "A", "mem.train", {**params, "DATASET.ROIS": ["P"]}))))


SCORES = {
    "per_scheme": {
        "all-0": {"mean": 0.31, "per_subject": {"subj01": 0.30, "subj02": 0.32}},
        "all-1": {"mean": 0.30, "per_subject": {"subj01": 0.29, "subj02": 0.31}},
        "A": {"mean": 0.28, "per_subject": {"subj01": 0.27, "subj02": 0.29}},
    },
    "cumulative": [
        {"schemes": ["all-0"], "mean": 0.31},
        {"schemes": ["all-0", "all-1"], "mean": 0.33},
        {"schemes": ["all-0", "all-1", "A"], "mean": 0.345},
    ],
}


def memq(*args: object) -> subprocess.CompletedProcess[str]:
    """The real `memq` command line in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "memq", *map(str, args)], capture_output=True, text=True, timeout=300)


@dataclass(frozen=True)
class Report:
    root: Path
    out: Path
    ensemble: Path
    truth: Path
    run: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def report(synth_eval: SynthInfo, tmp_path_factory: pytest.TempPathFactory) -> Report:
    base = tmp_path_factory.mktemp("report")
    root, out, ensemble = base / "root", base / "out", base / "ensemble"
    build_root(root, synth_eval.data_dir)
    write_submission(ensemble, synth_eval, {s: planted_test_signal(synth_eval, s) for s in synth_eval.subjects})
    (ensemble / "scores.json").write_text(json.dumps(SCORES))
    manifest = {"grid": GRID, "split": "predict", "subjects": synth_eval.subjects, "schemes": {"all-0": [1]}}
    (ensemble / "ensemble.json").write_text(json.dumps(manifest))
    truth = synth_eval.data_dir / "truth"
    ran = memq("--root", root, "report", GRID, "--out", out, "--ensemble", ensemble, "--truth", truth)
    return Report(root, out, ensemble, truth, ran)


def test_report_page_and_pictures(report: Report) -> None:
    assert report.run.returncode == 0, report.run.stderr
    assert report.run.stdout.strip() == f"wrote {report.out / 'index.html'}"
    html = (report.out / "index.html").read_text()
    assert re.findall(r'<img src="([^"]+)"', html) == list(PNGS)
    for name in PNGS:
        with Image.open(report.out / name) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert min(pixels.shape) > 200 and pixels.std() > 5, name  # a real picture, not an empty canvas
    assert "6 jobs: 1 queued, 5 succeeded" in html
    assert "No CSV logs with validation r for 2 jobs: job 5: ROI L (succeeded); job 6: ROI P (queued)." in html
    assert "Ensemble of 3 schemes: r = 0.3450; best single scheme all-0: r = 0.3100; gain +0.0350." in html
    assert "ensemble.json (the ensemble&#x27;s manifest)" in html and "&quot;split&quot;: &quot;predict&quot;" in html
    scored = json.loads(memq("score", report.ensemble, "--truth", report.truth, "--json").stdout)
    n, median, mean = scored["all"]["n"], scored["all"]["median"], scored["all"]["mean"]
    assert f"<td>all</td><td>{n:,}</td><td>{median:.1f}%</td><td>{mean:.1f}%</td>" in html
    assert "<td>MV</td>" in html  # per stream ROI
    assert f"of {report.truth.parent.name}, averaged" in html  # the vertex ids came from the jobs' DATASET.DIR


def test_report_says_first_that_the_data_is_synthetic_and_what_its_ceiling_is(
    report: Report, synth_eval: SynthInfo
) -> None:
    html = (report.out / "index.html").read_text()
    assert "<h1>memq report: grid evalgrid (synthetic data)</h1>" in html
    top = html[: html.index("<h2>")]  # before the first section
    data, truth = re.findall(r'<p class="origin">([^<]*)</p>', top)
    assert data.startswith(f"Synthetic data, not measured: the prepared data ({synth_eval.data_dir.name}: 2 subjects,")
    assert f"Best achievable validation r: {synth_eval.r_ceiling_mean:.4f} (" in data  # what the generator recorded
    assert truth.startswith("Synthetic test truth, not measured: the test truth (truth) was made by memq data synth")
    assert "(seed 0, noise 1.0)" in truth and "the best achievable score is 100%" in truth


def measured_copy(synth_eval: SynthInfo, out: Path) -> tuple[Path, Path]:
    """The synthetic subjects and truth as measured data has them: space fsaverage, no synth_* marks."""
    data, truth = out / "nsd", out / "nsd" / "truth"
    shutil.copytree(synth_eval.data_dir / "truth", truth, ignore=shutil.ignore_patterns("synthetic.json"))
    for subject in synth_eval.subjects:
        shutil.copy(synth_eval.data_dir / f"{subject}.h5", data)
        with h5py.File(data / f"{subject}.h5", "r+") as f:
            f.attrs["space"] = "fsaverage"
            for name in [name for name in f.attrs if name.startswith("synth_")]:
                del f.attrs[name]
    return data, truth


def test_report_on_measured_data_never_says_synthetic(report: Report, synth_eval: SynthInfo, tmp_path: Path) -> None:
    data, truth = measured_copy(synth_eval, tmp_path)
    out = tmp_path / "out"
    ran = memq("--root", report.root, "report", GRID, "--out", out, "--ensemble", report.ensemble,
               "--truth", truth, "--data", data)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    html = (out / "index.html").read_text()
    assert "synthetic" not in html.lower()
    assert "<h1>memq report: grid evalgrid</h1>" in html
    assert "Measured data: the prepared data (nsd: 2 subjects, 360 voxels, space fsaverage)." in html
    assert "best achievable value is not known" in html
    assert "Measured test truth (truth)." in html and "100% is the noise ceiling" in html
    assert re.findall(r'<img src="([^"]+)"', html) == list(PNGS)  # fsaverage data still has its surface map


def test_page_shows_no_absolute_path(report: Report, synth_eval: SynthInfo) -> None:
    html = (report.out / "index.html").read_text()
    base = report.root.parent.parent  # pytest's base directory of this session's files
    assert str(base) not in html and str(base.resolve()) not in html
    assert "6 jobs: 1 queued, 5 succeeded. Root root." in html
    assert f"of {synth_eval.data_dir.name}, averaged over subjects" in html


def test_numbers_have_one_format_per_kind(report: Report) -> None:
    html = (report.out / "index.html").read_text()
    tables = [re.findall(r"<tr>(.*?)</tr>", body) for body in re.findall(r"<tbody>(.*?)</tbody>", html)]
    schemes, subjects, rois, jobs = ([re.findall(r"<td>([^<]*)</td>", row) for row in rows] for rows in tables)
    r_value, score, count = re.compile(r"-|0\.\d{4}"), re.compile(r"-|\d{1,3}\.\d%"), re.compile(r"\d{1,3}(,\d{3})*")
    assert schemes[0] == ["all-0", "0.3100", "0.3000", "0.3200", "0.3100"]
    assert all(r_value.fullmatch(cell) for row in schemes for cell in row[1:])
    assert all(count.fullmatch(row[1]) and all(score.fullmatch(c) for c in row[2:]) for row in subjects + rois)
    assert jobs[0] == ["1", "all", "whole brain (repeat 0)", "succeeded", "2", "0.2600", "3"]
    assert all(r_value.fullmatch(row[5]) for row in jobs)


def test_curves_join_attempts(report: Report) -> None:
    epochs, values = val_curve(report.root, GRID, 1, attempts=2)
    assert epochs.tolist() == [0, 1, 2, 3, 4] and values.tolist() == [0.10, 0.15, 0.20, 0.24, 0.26]
    assert val_curve(report.root, GRID, 5, attempts=1) is None
    assert val_curve(report.root, GRID, 6, attempts=0) is None


def test_report_sections_without_inputs_and_errors(report: Report, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(report.out, out)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"name: {GRID}\ngroups:\n  - name: all\n")
    ran = memq("report", grid_file, "--root", report.root, "--out", out)  # a grid file; --root after the command
    assert ran.returncode == 0, ran.stderr
    html = (out / "index.html").read_text()
    assert re.findall(r'<img src="([^"]+)"', html) == ["curves.png"]
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "index.html"]  # stale pictures removed
    assert "No --ensemble given." in html and "Needs --ensemble (the submission) and --truth" in html
    ran = memq("--root", report.root, "report", "nogrid", "--out", out)
    assert ran.returncode == 2
    assert ran.stderr == f"error: {report.root}: no jobs of grid 'nogrid' (hint: `memq status` lists the grids)\n"
    ran = memq("--root", report.root, "report", GRID, "--out", out, "--ensemble", tmp_path / "none")
    assert ran.returncode == 2 and "no such ensemble output directory" in ran.stderr


def test_surface_mapping(synth_eval: SynthInfo) -> None:
    none = np.array([], dtype=np.int64)
    first = ({"lh": np.array([5, 20_000, 7]), "rh": np.array([5, 12])}, {"lh": [10.0, 99.0, 30.0], "rh": [40.0, 50.0]})
    second = ({"lh": np.array([5]), "rh": none}, {"lh": [20.0], "rh": []})
    maps = fsaverage5_mean([(v, {h: np.array(x) for h, x in x.items()}) for v, x in (first, second)])
    assert maps["lh"].shape == maps["rh"].shape == (FS5_VERTICES,)
    assert maps["lh"][5] == 15 and maps["lh"][7] == 30 and np.isfinite(maps["lh"]).sum() == 2  # 20,000 is not fs5
    assert maps["rh"][5] == 40 and maps["rh"][12] == 50 and np.isfinite(maps["rh"]).sum() == 2
    subject = synth_eval.subjects[0]
    with open_subject(synth_eval.data_dir / f"{subject}.h5") as f:
        c, ids = f.challenge, f.voxel_indices()
    ids_by_hemi = challenge_vertices(synth_eval.data_dir, subject, {"lh": c.n_lh, "rh": c.n_rh})
    assert np.array_equal(ids_by_hemi["lh"], ids[: c.n_lh])
    assert np.array_equal(ids_by_hemi["rh"] + FS7_VERTICES, ids[c.n_lh : c.n_challenge])
    assert ids_by_hemi["rh"].min() >= 0 and ids_by_hemi["lh"].max() < FS7_VERTICES
    with pytest.raises(Exception, match="does not match the scored vertices"):
        challenge_vertices(synth_eval.data_dir, subject, {"lh": 3, "rh": 2})


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MEMQ_REQUIRE_RIGS") == "1":
            pytest.fail("chromium is not installed but MEMQ_REQUIRE_RIGS=1")
        pytest.skip("chromium is not installed: the headless rendering check needs it")
    return path


PROBE = """<script>
window.addEventListener("load", () => {
  const seen = Array.from(document.images).map(i => `${i.getAttribute("src")}=${i.naturalWidth}x${i.naturalHeight}`);
  document.body.setAttribute("data-images", seen.join(" "));
});
</script>
</body>"""


def test_page_renders_in_headless_chromium(report: Report, tmp_path: Path) -> None:
    browser = chromium()
    site = tmp_path / "site"
    shutil.copytree(report.out, site)
    # a copy of the page that writes what the browser decoded of each <img> into the DOM
    probe = site / "probe.html"
    probe.write_text((site / "index.html").read_text().replace("</body>", PROBE))
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="([^"]*)"', dom.stdout)
    assert found, dom.stdout[-2000:]
    decoded = dict(item.split("=") for item in found.group(1).split())
    assert list(decoded) == list(PNGS)
    for name, size in decoded.items():
        with Image.open(site / name) as image:
            assert size == f"{image.width}x{image.height}" and image.width > 0, name  # loaded and decoded
    shot = tmp_path / "shot.png"
    ran = subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,4000", (site / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0 and shot.is_file(), ran.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (4000, 1280)
    colourful = np.abs(pixels - pixels.mean(-1, keepdims=True)).max(-1) > 40  # not text-grey: the plots
    assert colourful.mean() > 0.005 and pixels.std() > 20  # the page without its pictures: about 0.0005
