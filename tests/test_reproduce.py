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


def _interval(mean, lo, hi, n=3):
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


def test_verdicts_follow_the_rules():
    """Planted inputs on each side of each rule's bounds."""
    g = torch.Generator().manual_seed(0)

    def run(prior, seed, moved, method="soft"):
        base = {"normal": 0.0, "far": 5.0}[prior]
        p = torch.randn(4, 8, generator=g) * 0.1 + base
        return C.TunedRun(f"{method}-{prior}-{seed}", method, prior, seed, prior_tensors={"soft": p},
                          posterior_tensors={"soft": p + moved})
    stay = [run(p, s, 0.01) for p in ("normal", "far") for s in range(3)]
    assert C.claim_priors_position(stay)["verdict"] == C.HOLDS
    wander = [run(p, s, 20.0) for p in ("normal", "far") for s in range(3)]
    assert C.claim_priors_position(wander)["verdict"] == C.FAILS

    def scored(prior, score, seed):
        return C.TunedRun(f"{prior}{seed}", "soft", prior, seed, score=score)
    same = [scored("region:new", 50 + s, s) for s in range(3)] + [scored("region:data", 51 - s, s) for s in range(3)]
    assert C.claim_new_region(same, {"a": 0.0})["verdict"] == C.HOLDS
    assert C.claim_new_region(same, {"a": 0.5})["verdict"] == C.UNSURE  # went back inside the data region
    worse = [scored("region:new", 10 + s, s) for s in range(3)] + [scored("region:data", 60 - s, s) for s in range(3)]
    assert C.claim_new_region(worse, {"a": 0.0})["verdict"] == C.FAILS

    def losses(level, seed):
        return C.TunedRun(f"r{level}{seed}", "deep", "normal", seed,
                          losses=[(i, level + 0.01 * seed) for i in range(10)])
    plain, sink, last3 = ([losses(v, s) for s in range(3)] for v in (1.4, 0.2, 0.17))
    assert C.claim_sink(plain, sink, last3)["verdict"] == C.HOLDS
    assert C.claim_sink(last3, plain, plain)["verdict"] == C.FAILS

    rows = [{"task": t, "layer": 1, "points": 8, "step_ratio": 1.0 + 0.01 * i, "spread_ratio": 0.9, "order_p": 0.5}
            for i, t in enumerate(("arith", "qa", "fill"))]
    assert C.claim_trajectories(rows)["verdict"] == C.HOLDS
    assert C.claim_trajectories([dict(r, step_ratio=0.1 + 0.01 * i) for i, r in enumerate(rows)])["verdict"] == C.FAILS

    def cluster(pair, sil, p=0.001):
        return [{"seed": s, "layer": l, "pair": pair, "silhouette": sil, "p": p, "nc1": 1.0, "frechet": 1.0}
                for s in range(2) for l in range(4)]
    apart = cluster(("arith", "qa"), 0.5) + cluster(("arith", "fill"), 0.5) + cluster(("qa", "fill"), 0.02, 0.5)
    assert C.claim_task_clusters(apart)["verdict"] == C.HOLDS
    mixed = cluster(("arith", "qa"), 0.02, 0.5) + cluster(("arith", "fill"), 0.02, 0.5) + cluster(("qa", "fill"), 0.5)
    assert C.claim_task_clusters(mixed)["verdict"] == C.FAILS


def test_transfer_verdict_and_steps_to_95():
    assert C.steps_to_95([(0, 4.0), (10, 2.0), (20, 1.1), (30, 1.0)]) == 20
    assert C.steps_to_95([(0, 1.0), (10, 2.0)]) is None

    def run(seed, start_step, weight=None, displacement=0.0, score=50.0):
        curve = [(0, 4.0)] + [(s, 4.0 if s < start_step else 1.0) for s in range(10, 110, 10)]
        return C.TunedRun(f"r{seed}{weight}", "soft", "normal" if weight is None else "posterior", seed,
                          score=score + seed, val=curve, extra={"weight": weight or 0.0, "displacement": displacement})
    fresh = [run(s, 80 + 10 * s) for s in range(3)]
    warm = [run(s, 20 + (s % 2) * 10, w, displacement=10.0 / (1 + w) + 0.01 * s) for s in range(3) for w in (0, 1, 10)]
    assert C.claim_transfer(fresh, warm)["verdict"] == C.HOLDS
    slow = [run(s, 100, w, displacement=1.0 + w, score=10.0) for s in range(3) for w in (0, 1, 10)]
    assert C.claim_transfer(fresh, slow)["verdict"] == C.FAILS


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
    for key in ("3", "4", "5", "6"):
        assert verdicts[key]["verdict"] == C.NOT_MEASURED and verdicts[key]["missing"], verdicts[key]
    assert verdicts["1"]["verdict"] != C.NOT_MEASURED


def test_quick_study_writes_every_file(quick_study):
    out, _, done, again = quick_study
    for name in ("FINDINGS.md", "findings.html", "runs.csv", "claims.json"):
        assert (out / name).is_file(), name
    md = (out / "FINDINGS.md").read_text()
    assert md.index("| claim | statistic") < md.index("## Claim 1")
    html = (out / "findings.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and 'src="figures/' not in html
    with open(out / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    study = Study.build("tiny", out, quick=True)
    assert len(rows) == sum(len(v) for v in study.stage_runs.values())
    assert all(r["status"] == "complete" for r in rows)
    assert {"run", "task", "method", "layers", "prior", "seed", "steps", "baseline_score", "tuned_score",
            "final_val_loss", "displacement", "inside_share"} <= set(rows[0])
    assert all(0 <= float(r["tuned_score"]) <= 100 for r in rows)
    claims = json.loads((out / "claims.json").read_text())["claims"]
    assert [c["claim"] for c in claims] == ["1", "2", "3", "4", "5", "6"]
    for c in claims:
        assert c["verdict"] in (C.HOLDS, C.FAILS, C.UNSURE), c
        assert c["rule"] == C.RULES[c["claim"]] and c["rule"] in md
        assert (out / "figures" / f"claim{c['claim']}.png").read_bytes().startswith(b"\x89PNG")
    # every verdict is what its rule gives on the numbers written next to it
    s = {c["claim"]: c["statistics"] for c in claims}
    rel, own = s["1"]["rel_disp"], s["1"]["own_prior_share"]
    expected1 = (C.HOLDS if rel["hi"] < 0.5 and own["lo"] > 0.5 else
                 C.FAILS if rel["lo"] > 1 or own["hi"] < 0.5 else C.UNSURE)
    assert claims[0]["verdict"] == expected1
    step, spread = s["3"]["step_ratio"], s["3"]["spread_ratio"]
    expected3 = (C.HOLDS if step["lo"] >= 0.75 and spread["lo"] >= 0.5 else
                 C.FAILS if step["hi"] < 0.75 or spread["hi"] < 0.5 else C.UNSURE)
    assert claims[2]["verdict"] == expected3
    assert all(math.isfinite(v) for k in ("step_ratio", "spread_ratio") for v in (s["3"][k]["lo"], s["3"][k]["hi"]))
    assert "skip" in again.stdout and "fresh" not in again.stdout and "resume" not in again.stdout, again.stdout
