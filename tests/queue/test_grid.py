"""Grid files: expansion, stable keys, templating, and one clear error per bad file."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from memq.errors import UserError
from memq.grid import load_grid
from memq.spec import JobSpec
from memq.template import render

from ..conftest import SMOKE


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_smoke_expands_to_nine_jobs_with_stable_distinct_keys(tmp_path: Path) -> None:
    spec = load_grid(write(tmp_path, SMOKE))
    assert len(spec.jobs) == 9
    assert [j.group for j in spec.jobs] == ["rois"] * 6 + ["whole"] * 3
    assert [j.params for j in spec.jobs[:3]] == [{"subj": 1, "roi": r} for r in ("E", "V", "L")]
    assert [j.repeat for j in spec.jobs[6:]] == [0, 1, 2]
    assert len({j.key for j in spec.jobs}) == 9
    again = load_grid(write(tmp_path, SMOKE, "copy.yaml"))
    assert [j.key for j in again.jobs] == [j.key for j in spec.jobs]
    whole = next(g for g in spec.groups if g.name == "whole")
    assert whole.after == ("rois",)


def test_key_ignores_param_order_but_not_values_grid_or_group(tmp_path: Path) -> None:
    base = "name: g\ndefaults: {kind: command, command: [echo]}\ngroups:\n  - name: a\n    params: {x: 1, y: 2}\n"
    a = load_grid(write(tmp_path, base)).jobs[0].key
    assert load_grid(write(tmp_path, base.replace("{x: 1, y: 2}", "{y: 2, x: 1}"))).jobs[0].key == a
    assert load_grid(write(tmp_path, base.replace("x: 1", "x: 3"))).jobs[0].key != a
    assert load_grid(write(tmp_path, base.replace("name: g", "name: h"))).jobs[0].key != a
    assert load_grid(write(tmp_path, base.replace("name: a", "name: b"))).jobs[0].key != a
    # The command is not part of a job's identity: editing it does not make new jobs.
    assert load_grid(write(tmp_path, base.replace("[echo]", "[ls, 3]"))).jobs[0].key == a


def test_keys_and_spec_hashes_are_those_earlier_versions_stored() -> None:
    # A queue keeps the keys and hashes that an earlier memq computed: the same job must hash the same,
    # or a resubmit would add it again (key) or call it edited (spec hash). Values from memq 6f1ecb8.
    job = JobSpec(grid="g", group="a", kind="command", params={"y": 2, "x": [1.5, "é"], "z": {"b": None, "a": True}},
                  repeat=1, command=["echo", "{x}"])
    assert (job.key, job.spec_hash) == ("36a4d4e768d091da297c8205388d4900", "aa5769fea9fbbe99")
    shared = JobSpec(grid="g", group="a", kind="command", params={"y": 2}, command=["echo"], gpu_share=0.25,
                     gpu_mem_gb=16)
    assert (shared.key, shared.spec_hash) == ("5fb78349840a9fefd3aa1ad9fe8e112e", "a58b2f3213d64df0")
    assert replace(job, params={"y": 3}).key != job.key  # (a copy with other params is another job)


def test_defaults_resources_and_overrides_merge(tmp_path: Path) -> None:
    text = """\
name: m
defaults:
  command: ["train", "--lr", "{OPTIMIZER.LR}", "--subj", "{subj}"]
  resources: {gpus: 2, mem_gb: 16}
  priority: 5
  params: {OPTIMIZER.LR: 0.001}
groups:
  - name: a
    grid: {subj: [1, 2]}
    resources: {gpus: 1}
    max_attempts: 7
  - name: b
    priority: -1
    params: {subj: 3, OPTIMIZER.LR: 0.01}
"""
    spec = load_grid(write(tmp_path, text), {"extra": "x"})
    a0, _, b = spec.jobs
    assert (a0.gpus, a0.mem_gb, a0.priority, a0.max_attempts) == (1, 16.0, 5, 7)
    assert (b.gpus, b.priority, b.max_attempts) == (2, -1, 3)
    assert a0.params == {"OPTIMIZER.LR": 0.001, "extra": "x", "subj": 1}
    assert b.params["OPTIMIZER.LR"] == 0.01
    assert render(b.command, b.params) == ["train", "--lr", "0.01", "--subj", "3"]


def test_template_rendering_keeps_arguments_whole() -> None:
    argv = ["python", "-c", "print('{x}')", "{{literal}}", "--roi={roi}", "{rois}"]
    out = render(argv, {"x": "a b; rm -rf /", "roi": "E", "rois": ["E", "V"]})
    assert out == ["python", "-c", "print('a b; rm -rf /')", "{literal}", "--roi=E", '["E","V"]']


def test_python_kind_defaults_to_one_gpu(tmp_path: Path) -> None:
    random = "MODEL.BACKBONE.WEIGHTS: random, MODEL.BACKBONE_SMALL.WEIGHTS: random"
    text = f"name: k\ngroups:\n  - name: a\n    kind: mem.train\n    params: {{DATASET.ROIS: [E], {random}}}\n"
    job = load_grid(write(tmp_path, text)).jobs[0]
    assert (job.kind, job.gpus, job.command) == ("mem.train", 1, None)


def test_xvbc_grid_has_the_111_jobs_of_the_winning_recipe() -> None:
    spec = load_grid(Path(__file__).parents[2] / "grids" / "xvbc.yaml")
    assert len(spec.jobs) == 111
    groups: dict[str, list] = {}
    for job in spec.jobs:
        groups.setdefault(job.group, []).append(job)
        assert job.kind == "mem.train"
    assert sorted(groups) == sorted(["all", "A", "W", *[f"R{j}" for j in range(1, 11)]])
    assert len(groups["all"]) == 3 and all("DATASET.ROIS" not in j.params for j in groups["all"])
    assert [j.params["DATASET.ROIS"] for j in groups["A"]] == [[r] for r in
                                                              ["RSC", "E", "MV", "ML", "MP", "V", "L", "P", "R"]]
    assert [j.params["DATASET.ROIS"] for j in groups["W"]] == [[f"w_{i}"] for i in range(1, 10)]
    for j in range(1, 11):
        assert [x.params["DATASET.ROIS"] for x in groups[f"R{j}"]] == [[f"r_{j}_{i}"] for i in range(1, 10)]
    assert len({j.key for j in spec.jobs}) == 111


ENSEMBLE = """\
name: x
defaults: {command: [echo]}
groups:
  - name: a
ensemble:
  soup: {kind: mem.soup}
  predict: {kind: mem.predict, splits: [predict]}
  combine: {kind: mem.ensemble}
"""


def test_ensemble_section_is_read_and_adds_no_jobs(tmp_path: Path) -> None:
    from memq.grid import load_grid_file

    text = ENSEMBLE.replace("{kind: mem.soup}", "{kind: mem.soup, params: {recipe: greedy}, resources: {gpus: 0}}")
    grid, _ = load_grid_file(write(tmp_path, text))
    assert grid.ensemble is not None
    assert (grid.ensemble.soup.kind, grid.ensemble.soup.params, grid.ensemble.soup.resources.gpus) == (
        "mem.soup", {"recipe": "greedy"}, 0)
    assert grid.ensemble.predict.splits == ["predict"] and grid.ensemble.combine.kind == "mem.ensemble"
    assert len(load_grid(write(tmp_path, text)).jobs) == 1


# (file text, line the error points at, words the message must contain)
BAD_FILES = [
    ("name: x\ngroups: [\n", 3, "invalid YAML"),
    ("- just\n- a list\n", 1, "mapping"),
    ("name: x\ngroup:\n  - name: a\n", 2, "unknown key 'group'"),
    ("groups:\n  - name: a\n    command: [echo]\n", 1, "name: required"),
    ("name: x\ngroups: []\n", 2, "groups"),
    ("name: x\ngroups:\n  - name: a\n    comand: [echo]\n", 4, "did you mean 'command'"),
    ("name: x\ngroups:\n  - name: a\n    command: [echo]\n    max_attempts: three\n", 5, "max_attempts"),
    ("name: x\ngroups:\n  - name: a\n    kind: mem.trian\n", 4, "unknown job kind 'mem.trian'"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n  - name: a\n", 5, "duplicate group name"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    after: [b]\n  - name: b\n    after: [a]\n",
     None, "dependency cycle"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    after: [nope]\n", 5, "unknown group 'nope'"),
    ("name: x\ngroups:\n  - name: a\n", 3, "no `command`"),
    ("name: x\ngroups:\n  - name: a\n    command: echo hello\n", 4, "command"),
    ("name: x\ngroups:\n  - name: a\n    command: [echo, '{sbj}']\n    grid: {subj: [1]}\n", 4, "{sbj}"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    grid: {subj: []}\n", 5, "grid.subj"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    repeat: 0\n", 5, "repeat"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    resources: {gpus: -1}\n", 5, "gpus"),
    ("name: x\nname: y\ngroups:\n  - name: a\n", 2, "duplicate key 'name'"),
    ("name: x\ngroups:\n  - name: a\n    kind: mem.train\n    command: [echo]\n", 5, "only for kind `command`"),
    ("name: 'bad name/with slash'\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n", 1, "name"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    params: {subj: 1}\n    grid: {subj: [2]}\n",
     6, "both fixed"),
    ("name: x\ngroups:\n  - name: a\n    resources: {gpus: 1, vram: 3}\n    command: [echo]\n", 4,
     "unknown key 'vram'"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    priority: 1.5\n", 5, "priority"),
    ("name: x\ngroups:\n  - name: a\n    kind: mem.train\n    params: {OPTIMZER.LR: 0.1}\n", 5, "OPTIMZER.LR"),
    ("", 0, "mapping"),
    ("name: x\ngroups:\n  - name: a\n    command:\n      - train\n      - --lr={lr\n    grid: {lr: [1]}\n", 6,
     "command argument '--lr={lr' has a brace that is not part of a {name} "
     "(hint: write {{ and }} for a literal brace)"),
    ("name: x\ndefaults:\n  command: [echo, '{}']\ngroups:\n  - name: a\n", 3, "command argument '{}' has a brace"),
    ("name: x\ndefaults: {command: [echo]}\nloop: &a [1, *a]\ngroups:\n  - name: a\n", 3,
     "alias *a is inside its own anchor"),
    ("name: " + "[" * 150 + "]" * 150 + "\n", 1, "nested more than 100 levels deep"),
    ("name: x\n" + "".join(f"x{i}: &x{i} " + "[" * 60 + (f"*x{i - 1}" if i else "") + "]" * 60 + "\n"
                           for i in range(20)), 3, "nested more than 100 levels deep"),  # (aliases nest too)
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    params: {blob: " + "x" * 70_000 + "}\n", 4,
     "a job's params take 70,011 bytes as JSON, more than 65,536"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    each: b\n  - name: b\n", 5,
     "group 'a': each: 'b' is not a group above it"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n  - name: b\n    each: [a, c]\n", 6,
     "each: 'c' is not a group above it"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    after: [b]\n  - name: b\n    each: a\n",
     None, "dependency cycle"),
    ("name: x\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n  - name: b\n    each: a\n"
     "    params: {source_job: 3}\n", 6, "sets 'source_job' itself"),
    *[(ENSEMBLE.replace(old, new), line, words) for old, new, line, words in [
        ("splits: [predict]", "splitz: [predict]", 7, "unknown key 'splitz' in ensemble.predict (hint: did you mean "
                                                      "'splits'?)"),
        ("{kind: mem.soup}", "{kind: mem.soop}", 6, "unknown job kind 'mem.soop' (hint: did you mean 'mem.soup'?)"),
        ("{kind: mem.ensemble}", "{kind: command}", 8, "ensemble stage 'combine' needs a Python job kind"),
        (", splits: [predict]", "", 7, "ensemble.predict.splits: required"),
        ("  combine: {kind: mem.ensemble}\n", "", 5, "ensemble.combine: required"),
        ("  combine:", "  stitch: {kind: mem.ensemble}\n  combine:", 8, "unknown key 'stitch' in ensemble"),
        ("{kind: mem.soup}", "{kind: mem.soup, resources: {gpu: 1}}", 6, "did you mean 'gpus'"),
        ("{kind: mem.ensemble}", "{kind: mem.ensemble, params: {schemes: [a, all-2]}}", 8,
         "ensemble scheme 'all-2' is not a group of this grid"),
    ]],
]


def _db_state(root: Path) -> str:
    """A digest of the database's content (the file's bytes move with WAL checkpoints)."""
    conn = sqlite3.connect(root / "queue.db")
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


@pytest.mark.parametrize(("text", "line", "words"), BAD_FILES, ids=[f"bad{i:02d}" for i in range(len(BAD_FILES))])
def test_bad_grid_file_gives_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, cli, smoke_file: Path, text: str, line: int | None, words: str,
) -> None:
    root = tmp_path / "root"
    assert cli("--root", root, "submit", smoke_file).code == 0
    before = _db_state(root)
    bad = write(tmp_path, text, "bad.yaml")
    for args in (["submit", bad], ["submit", "--dry-run", bad]):
        result = cli("--root", root, *args)
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        prefix = f"error: {bad}:{line}: " if line else f"error: {bad}"
        assert lines[0].startswith(prefix), lines[0]
        assert words in lines[0], lines[0]
        assert result.out == ""
    assert _db_state(root) == before
    status = json.loads(cli("--root", root, "status", "--json").out)
    assert status["counts"]["queued"] == 9


def _alias_bomb(levels: int, *, in_params: bool) -> str:
    """A "billion laughs": each level is a list of 9 aliases of the level below."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    if in_params:
        body = "\n".join("      " + line for line in lines)
        return f"name: b\ndefaults: {{command: [echo, '{{p}}']}}\ngroups:\n  - name: a\n    params:\n{body}\n" \
               f"      p: *a{levels}\n"
    body = "\n".join("  " + line for line in lines)
    return (f"name: b\ndefaults: {{command: [echo]}}\nbomb:\n{body}\n"
            f"groups:\n  - name: a\n    params: {{p: *a{levels}}}\n")


def test_an_alias_bomb_is_refused_at_once_and_nothing_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    exe = Path(sys.executable).with_name("memq")
    # 9 levels: 387 million values (memq hung in its duplicate-key check); 7 levels inside params:
    # 4.8 million (accepted, a 39 MB database, then "argument list too long" for the job)
    for levels, in_params, line in ((9, False, 9), (7, True, 11)):
        bomb = write(tmp_path, _alias_bomb(levels, in_params=in_params), f"bomb{levels}.yaml")
        started = time.monotonic()
        done = subprocess.run([str(exe), "--root", str(root), "submit", str(bomb)], capture_output=True, text=True,
                              timeout=30)
        took = time.monotonic() - started  # (mostly the interpreter starting)
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr == (f"error: {bomb}:{line}: aliases expand to more than 100,000 values "
                               "(hint: a YAML alias bomb? write the values out)\n")
        assert took < 10
    assert not root.exists()


def test_aliases_that_repeat_a_few_values_are_fine(tmp_path: Path) -> None:
    text = ("name: g\ndefaults: {command: [echo]}\ngroups:\n  - name: a\n    params: &p {rois: [E, V], lr: 0.1}\n"
            "  - name: b\n    params: *p\n")
    assert [j.params for j in load_grid(write(tmp_path, text)).jobs] == [{"rois": ["E", "V"], "lr": 0.1}] * 2


def test_bad_files_enough() -> None:
    assert len(BAD_FILES) >= 15


def test_missing_file_and_bad_set_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_grid(tmp_path / "nope.yaml")
    from memq.overrides import parse_overrides

    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["novalue"])
    assert parse_overrides(["A.B=3", "L=[1, 2]", "S=text"]) == {"A.B": 3, "L": [1, 2], "S": "text"}


def test_loading_a_grid_file_does_not_import_the_store() -> None:
    code = "import sys, memq.grid; print(sorted(m for m in sys.modules if m.startswith(('memq.store', 'sqlalchemy'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_winning_recipe_pipeline_has_the_reference_s_steps_and_counts() -> None:
    from collections import Counter

    spec = load_grid(Path(__file__).parents[2] / "grids" / "mem-heavy.yaml")
    groups = Counter(job.group.split(".")[0] for job in spec.jobs)
    assert len(spec.jobs) == 483
    assert groups == {"prepare": 8, "features": 1, "topyneck": 24, "gather": 1, "wholebrain": 1, "wholebrain-soup": 1,
                      "atlas-w": 1, "all": 3, "A": 9, "W": 9, **{f"R{i}": 9 for i in range(1, 11)}, "soup": 111,
                      "predict": 222, "combine": 1, "report": 1}
    trained = [job for job in spec.jobs if job.kind == "mem.train"]
    assert len(trained) == 112 and all(j.params["MODEL.TOPYNECK_PATH"] == "/data/alg23/topyneck/topyneck.pth"
                                       for j in trained)
    after = {g.name: g for g in spec.groups}
    atlas = next(j for j in spec.jobs if j.group.startswith("atlas-w."))
    assert after["W"].after == (atlas.group,) and after[atlas.group].after_jobs[0][:10] == atlas.group[-10:]
    soups = [j for j in spec.jobs if j.group.startswith("soup.")]
    assert {j.params["source_job"] for j in soups} == {j.key for j in trained if j.group != "wholebrain"}
