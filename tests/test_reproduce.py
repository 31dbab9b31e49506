"""`eptk reproduce`: run names equal `eptk sweep`'s, bad input refused, verdicts that follow the rules, and the
quick study end to end on the tiny model (every file written, rerun skips everything, a partial study says
what it misses)."""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from eptk.reproduce import claims as C
from eptk.reproduce.claims import CLAIMS
from eptk.reproduce.stages import Study

pytestmark = pytest.mark.filterwarnings("ignore")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "eptk.cli", *map(str, args)], capture_output=True, text=True, env=env)


def test_main_grid_names_are_the_sweep_names(tmp_path):
    from eptk.sweep import load_sweep

    grid = tmp_path / "seed0.toml"
    grid.write_text('tasks = ["arith"]\nmethods = ["soft", "deep"]\nlayers = ["last:3"]\n'
                    'priors = ["normal", "region:between:arith,qa"]\ntokens = [20]\nseeds = [0]\n'
                    '[fixed]\nmodel = "smollm2"\nsteps = 150\nbatch_size = 16\neval_every = 25\neval_size = 100\n'
                    'test_size = 200\ncheckpoint_every = 25\n')
    swept = {r.name: r.settings for r in load_sweep(grid).runs}
    main = {r.name: r.settings for r in Study.build("smollm2", tmp_path).stage_runs["main"]}
    assert {"arith-soft-normal-t20-s0", "arith-deep-last3-region-between-arith+qa-t20-s0"} <= set(swept)
    for name, settings in swept.items():
        assert main[name] == settings, name  # same name, same settings: a sweep's run is complete for reproduce


@pytest.mark.parametrize("args,word", [(("--stages", "bogus"), "unknown stage 'bogus'; valid: main"),
                                       (("--shard", "2/2"), "bad --shard"), (("--jobs", "0"), "--jobs")])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, word):
    done = _cli("reproduce", "--model", "tiny", "--quick", "--out", tmp_path / "study", *args)
    assert done.returncode == 2 and word in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "study").exists()


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    env = dict(__import__("os").environ, EPTK_CACHE=str(root / "cache"), OMP_NUM_THREADS="1")
    out = root / "study"
    partial = _cli("reproduce", "--model", "tiny", "--quick", "--out", out, "--stages", "main,report", "--jobs", "2",
                   "--quiet", env=env)
    assert partial.returncode == 0, partial.stderr[-3000:]
    partial_claims = json.loads((out / "claims.json").read_text())["claims"]
    done = _cli("reproduce", "--model", "tiny", "--quick", "--out", out, "--jobs", "2", "--quiet", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    again = _cli("reproduce", "--model", "tiny", "--quick", "--out", out, "--dry-run", env=env)
    return out, partial_claims, done, again


def test_a_partial_study_says_what_it_misses(quick_study):
    _, partial, _, _ = quick_study
    verdicts = {c["claim"]: c for c in partial}
    for key in ("2", "3", "4", "5", "6"):
        assert verdicts[key]["verdict"] == C.NOT_MEASURED and verdicts[key]["missing"], verdicts[key]
    assert verdicts["1"]["verdict"] != C.NOT_MEASURED


def test_a_run_is_read_with_its_baseline_and_tuned_scores_apart(quick_study, tmp_path):
    """The tiny model scores 0 with and without a prompt, so the study's own runs cannot tell the two apart: one
    of them, copied with its per-item predictions dropped and its eval.json given two different scores, can."""
    import shutil

    from eptk.reproduce.gather import Gathered

    out = quick_study[0]
    run = Study.build("tiny", out, quick=True).stage_runs["main"][0]
    copy = tmp_path / "study"
    shutil.copytree(out / run.name, copy / run.name, ignore=shutil.ignore_patterns("predictions*", "eval-*"))
    ev = json.loads((copy / run.name / "eval.json").read_text())
    ev["baseline"]["score"], ev["tuned"]["score"] = 12.5, 87.5
    (copy / run.name / "eval.json").write_text(json.dumps(ev))
    got = Gathered(Study.build("tiny", copy, quick=True)).runs
    assert list(got) == [run.name]
    assert (got[run.name].baseline, got[run.name].score) == (12.5, 87.5)


def test_a_claim_2_run_is_read_from_its_finished_continuation(quick_study, tmp_path):
    """RULES.md amendment 1: a run trained again to twice its budget (as extend.sh does where no checkpoint is
    left) in its v3- folder is what the report reads for that run, with its budget; unfinished, the v2 run."""
    import os
    import shutil

    from eptk.reproduce.budget import continued_name
    from eptk.reproduce.claims.new_region import standing_of
    from eptk.reproduce.gather import Gathered

    out = quick_study[0]
    study = Study.build("tiny", out, quick=True)
    run = study.stage_runs["converged"][0]
    copy = tmp_path / "study"
    shutil.copytree(out / run.name, copy / run.name, ignore=shutil.ignore_patterns(".lock"))
    v3, first = continued_name(run.name), study.scale.converged["steps"]
    (copy / v3).mkdir()                                   # under way: the version-2 run is read
    got = Gathered(Study.build("tiny", copy, quick=True))
    assert got.paths[run.name] == copy / run.name and got.runs[run.name].extra["budget"] == first
    env = dict(os.environ, EPTK_CACHE=str(out.parent / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "eptk.cli", "tune", "--config", f"{run.name}/config.json",
                           "--steps", str(2 * first), "--out", v3, "--overwrite", "--quiet"], cwd=copy, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    got = Gathered(Study.build("tiny", copy, quick=True))
    assert got.paths[run.name] == copy / v3
    continued = got.runs[run.name]
    assert continued.extra["budget"] == 2 * first and standing_of(continued).budget == 2 * first
    assert json.loads((copy / v3 / "config.json").read_text())["out"] == v3   # no path of this machine
    # claim 2's table of continued runs: the score at version 2's budget (here made 12.5 in the v2 run's eval.json,
    # its items dropped: the tiny model scores 0 either way) beside the continuation's
    from eptk.reproduce.claims import new_region
    ev = json.loads((copy / run.name / "eval.json").read_text())
    ev["tuned"]["score"] = 12.5
    (copy / run.name / "eval.json").write_text(json.dumps(ev))
    (copy / run.name / "predictions.jsonl").unlink()
    rows = new_region.measure(got)["figure"]["continued_runs"]
    stop = json.loads((copy / v3 / "eval.json").read_text())["early_stop"]
    assert rows == [{"run": run.name, "score_at_first_budget": 12.5,
                     "best_step_at_first_budget": ev["early_stop"]["best_step"], "budget": 2 * first,
                     "stopped_at": stop["step"] if stop["stopped"] else None, "best_step": stop["best_step"],
                     "score": continued.score, "departs_at": None}]   # resumed from the checkpoint: the same steps


def test_quick_study_writes_every_file(quick_study):
    out, _, done, again = quick_study
    for name in ("FINDINGS.md", "findings.html", "runs.csv", "claims.json"):
        assert (out / name).is_file(), name
    md = (out / "FINDINGS.md").read_text()
    assert md.index("| claim | statistic") < md.index("## Claim 1")
    assert "Rules commit: unknown" in md     # a study folder outside a git repository
    html = (out / "findings.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and 'src="figures/' not in html
    with open(out / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    study = Study.build("tiny", out, quick=True)
    training = ("main", "transfer", "sink", "converged", "ablation")
    assert len(rows) == sum(len(study.stage_runs[s]) for s in training)
    assert all(r["status"] == "complete" for r in rows)
    for name in ("FINDINGS.md", "runs.csv", "claims.json"):   # committed results hold no folder of this machine
        assert str(out.parent) not in (out / name).read_text(), name
    assert {r["prior"] for r in rows if r["stage"] == "transfer"} >= {"posterior:arith-soft-normal-t4-s0"}
    assert {"run", "task", "method", "layers", "prior", "seed", "steps", "baseline_score", "tuned_score",
            "best_val_loss", "stalled", "test_items", "displacement", "inside_share", "distance"} <= set(rows[0])
    assert all(0 <= float(r["tuned_score"]) <= 100 for r in rows)
    # version-1 runs were scored again on the study's test items; version-2 runs on theirs
    assert {int(r["test_items"]) for r in rows if r["stage"] in ("main", "transfer", "sink")} == {12}
    assert {int(r["test_items"]) for r in rows if r["stage"] in ("converged", "ablation")} == {8}
    claims = json.loads((out / "claims.json").read_text())["claims"]
    assert [c["claim"] for c in claims] == sorted(CLAIMS)
    for c in claims:
        assert c["verdict"] in (C.HOLDS, C.FAILS, C.UNSURE, C.NOT_MEASURED), c
        assert c["rule"] == CLAIMS[c["claim"]].rule and c["rule"] in md
    for key in ("1", "2", "3", "4", "6"):
        assert (out / "figures" / f"claim{key}.png").read_bytes().startswith(b"\x89PNG"), key
    # every verdict is what its rule gives on the numbers written next to it
    by = {c["claim"]: c for c in claims}
    from eptk.reproduce.claims import priors_position, task_clusters, trajectories
    assert by["1"]["verdict"] == priors_position.decide(by["1"]["figure"]["table"])[0]
    s3 = by["3"]["statistics"]
    assert by["3"]["verdict"] == trajectories.decide(s3["step_ratio"], s3["spread_ratio"])[0]
    assert by["4"]["verdict"] == task_clusters.decide(by["4"]["figure"]["table"])[0]
    assert all(math.isfinite(v) for k in ("step_ratio", "spread_ratio") for v in (s3[k]["lo"], s3[k]["hi"]))
    for c in claims:   # every interval printed stays inside its quantity's range
        for row in (c.get("figure") or {}).get("table", []):
            for key in ("score", "score_without_stalls"):
                if isinstance(row.get(key), dict) and row[key].get("lo") is not None:
                    assert 0 <= row[key]["lo"] <= row[key]["hi"] <= 100, (c["claim"], row)
    assert "skip" in again.stdout and "fresh" not in again.stdout and "resume" not in again.stdout, again.stdout


def test_claim4_silhouettes_are_kept_so_a_report_needs_no_captures(quick_study, tmp_path):
    """The report keeps claim 4's silhouettes in measures/ (small, committed); a copy of the study without its
    captures (large, not committed) reads them back, the same rows; kept rows of other captures, or none, are not
    read, and the captures count as missing."""
    import shutil

    from eptk.reproduce.gather import Gathered

    out = quick_study[0]
    whole = Gathered(Study.build("tiny", out, quick=True))
    tokens, missing = whole.token_rows()
    sequences = whole.cluster_rows()
    assert tokens and sequences and not missing
    kept = json.loads((out / "measures" / "token-silhouettes.json").read_text())
    assert sorted(kept["seeds"]) == [str(s) for s in Study.build("tiny", out, quick=True).scale.seeds]
    copy = tmp_path / "study"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("captures", "tokens"))
    assert not (copy / "tokens").exists() and not (copy / "captures").exists()
    bare = Gathered(Study.build("tiny", copy, quick=True))
    assert bare.token_rows() == (tokens, []) and bare.cluster_rows() == sequences
    # kept for other captures (a seed's list differs): not read
    kept["seeds"]["0"]["captures"] = kept["seeds"]["0"]["captures"][:-1]
    (copy / "measures" / "token-silhouettes.json").write_text(json.dumps(kept))
    rows, missing = Gathered(Study.build("tiny", copy, quick=True)).token_rows()
    assert {r["seed"] for r in rows} == {int(s) for s in kept["seeds"]} - {0}
    assert missing and all(m.startswith("tokens/") and m.endswith("-s0") for m in missing)
    (copy / "measures" / "token-silhouettes.json").unlink()
    rows, missing = Gathered(Study.build("tiny", copy, quick=True)).token_rows()
    assert rows == [] and len(missing) == len(Study.build("tiny", copy, quick=True).token_captures())


def test_positions_are_kept_so_a_report_needs_no_statistics(quick_study, tmp_path, monkeypatch):
    """Each run's position against the data's region is kept in measures/positions.json with the statistics it was
    measured on and its posterior's digest; a copy of the study on a machine without those statistics (an empty
    cache, no captures) reads the same positions back, and no position for a prompt other than the one measured,
    nor one kept against statistics the run does not name."""
    import shutil

    from eptk.reproduce.gather import Gathered

    out = quick_study[0]
    monkeypatch.setenv("EPTK_CACHE", str(out.parent / "cache"))
    whole = Gathered(Study.build("tiny", out, quick=True))
    placed = {name: whole.position(run) for name, run in whole.runs.items()}
    region = [n for n, r in whole.runs.items() if r.prior.startswith("region:")]
    assert region and all(placed[n] is not None for n in region)
    kept = json.loads((out / "measures" / "positions.json").read_text())["runs"]
    assert {n for n, p in placed.items() if p is not None} <= set(kept)
    assert {kept[n]["statistics"].split("/")[0] for n in region} == {"stats"}   # the run's own, relative
    assert str(out.parent) not in (out / "measures" / "positions.json").read_text()
    copy = tmp_path / "study"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("captures", "tokens"))
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "empty-cache"))
    bare = Gathered(Study.build("tiny", copy, quick=True))
    assert {name: bare.position(run) for name, run in bare.runs.items()} == placed
    # another prompt under the same name (a run trained again): not placed from what was kept for the first
    moved = Gathered(Study.build("tiny", copy, quick=True))
    run = moved.runs[region[0]]
    block = next(iter(run.posterior_tensors))
    run.posterior_tensors[block] = run.posterior_tensors[block] + 1.0
    assert moved.position(run) is None and moved.position(moved.runs[region[1]]) == placed[region[1]]
    # kept against statistics the run does not name: not read
    edited = json.loads((copy / "measures" / "positions.json").read_text())
    edited["runs"][region[1]]["statistics"] = "stats/0000000000000000"
    (copy / "measures" / "positions.json").write_text(json.dumps(edited))
    assert Gathered(Study.build("tiny", copy, quick=True)).position(moved.runs[region[1]]) is None


def _other_model_report(folder, claims, model="other"):
    folder.mkdir()
    (folder / "claims.json").write_text(json.dumps({"model": model, "claims": claims}))
    return folder


def test_another_models_verdicts_get_a_column_and_disagreements_are_named(quick_study, tmp_path):
    from eptk.reproduce import reproduce

    out = quick_study[0]
    ours = {c["claim"]: c for c in json.loads((out / "claims.json").read_text())["claims"]}
    assert json.loads((out / "claims.json").read_text())["model"] == "tiny"
    flipped = C.FAILS if ours["1"]["verdict"] != C.FAILS else C.HOLDS
    theirs = [dict(ours["1"], verdict=flipped, why="their reason"), dict(ours["2"], verdict=C.NOT_MEASURED)]
    theirs += [ours[k] for k in ("3", "4", "5")]                      # claim 6 is not in their report
    theirs[2] = dict(theirs[2], statistics={"step_ratio": {"mean": None, "lo": None, "hi": None}})  # NaN as written
    other = _other_model_report(tmp_path / "other", theirs)
    into = tmp_path / "both"
    assert reproduce(out, model="tiny", quick=True, stages=["report"], report_to=into, beside=[other],
                     progress=False) == 0
    md = (into / "FINDINGS.md").read_text()
    written = json.loads((into / "claims.json").read_text())
    assert {c["claim"]: c["verdict"] for c in written["claims"]} == {k: c["verdict"] for k, c in ours.items()}
    head = next(line for line in md.splitlines() if line.startswith("| claim |"))
    assert head == "| claim | tiny: statistic | tiny: verdict | other: statistic | other: verdict | rule |"
    rows = {line.split(".")[0][2:]: [c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line[:3] in {f"| {k}" for k in "123456"}}
    for key in "123456":
        assert rows[key][2] == f"**{ours[key]['verdict']}**", rows[key]
    assert rows["1"][4] == f"**{flipped}**" and rows["2"][4] == f"**{C.NOT_MEASURED}**"
    assert rows["6"][3:5] == ["—", "not in its report"]
    assert all(rows[k][4] == f"**{ours[k]['verdict']}**" for k in "345")
    assert rows["3"][3] == "step_ratio n/a"
    said = [line for line in md.splitlines() if "the models disagree" in line]
    assert said == [f"Claim 1: the models disagree: {ours['1']['verdict']} on tiny; {flipped} on other."]
    assert f"On other: **{flipped}**: their reason" in md
    assert written["model"] == "tiny" and written["beside"] == [{"model": "other", "findings": "../other/FINDINGS.md"}]
    assert '<a href="../other/findings.html">' in (into / "findings.html").read_text()
    assert str(tmp_path) not in md


@pytest.mark.parametrize("content,word", [(None, "no claims.json there"), ("{not json", "cannot be read"),
                                          ({"claims": []}, "names no model"),
                                          ({"model": "tiny", "claims": []}, "model tiny already has a column")])
def test_a_bad_beside_folder_is_one_line_and_writes_nothing(tmp_path, content, word):
    other = tmp_path / "other"
    other.mkdir()
    if content is not None:
        (other / "claims.json").write_text(content if isinstance(content, str) else json.dumps(content))
    done = _cli("reproduce", "--model", "tiny", "--quick", "--out", tmp_path / "study", "--stages", "report",
                "--beside", other)
    assert done.returncode == 2 and word in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "study").exists()
