"""Claim 2's measurement (eptk/reproduce/claims/new_region.py) on made-up runs of the full study's eight arms: each
arm's summary, which arms are compared, and when the verdict reads "not measured" (seeds short, runs still short of
the round's budget, an arm with no run) — the parts of the report that test_claims.py's bounds do not reach."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eptk.reproduce.claims import FAILS, HOLDS, NOT_MEASURED, UNSURE, TunedRun
from eptk.reproduce.claims import new_region as C2
from eptk.reproduce.stages import FULL, Study
from eptk.runs import RunDir

ITEMS = 200
SPREAD = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 0.0, -1.0, 1.0]   # seeds 0-9 around an arm's level: SD 0.97


def arms() -> list[dict]:
    return Study.converged_arms(SimpleNamespace(scale=FULL))


def run(arm: dict, seed: int, score: float, *, loss=0.1, inside=0.0, distance=1.0, stopped=True, step=300,
        best_step=200, budget=600) -> TunedRun:
    correct = round(score * ITEMS / 100)
    return TunedRun(f"{Study.arm_name(arm)}-s{seed}", arm["method"], arm["prior"], seed,
                    score=100 * correct / ITEMS, items=[1.0] * correct + [0.0] * (ITEMS - correct),
                    val=[(25, loss + 1.0), (best_step, loss)],
                    extra={"position": {"inside_share": inside, "distance": distance}, "budget": budget,
                           "early_stop": {"stopped": stopped, "step": step if stopped else budget,
                                          "best_step": best_step}})


def level(arm: dict) -> float:
    """A score level per arm, all different, so that a comparison of the wrong pair shows in its Δ."""
    base = {"region:data": 80.0, "region:new": 76.0}[arm["prior"]]
    return base + {"prior": 0.0, "none": 2.0}.get(arm.get("lr_scale"), 0.0) + (4.0 if arm.get("lr") == 1e-3 else 0.0)


def study_runs(**settings) -> dict[str, list[TunedRun]]:
    """Every arm's 10 runs: scores around the arm's level (SD about 1, so the power rule asks for the first 10
    seeds), region:data inside the data and region:new outside."""
    out = {}
    for arm in arms():
        inside = 0.9 if arm["prior"] == "region:data" else 0.0
        out[Study.arm_name(arm)] = [run(arm, s, level(arm) + x, inside=inside, loss=0.1 + 0.01 * s, **settings)
                                    for s, x in enumerate(SPREAD)]
    return out


def gathered(runs: dict[str, list[TunedRun]], missing=()) -> SimpleNamespace:
    """What claim 2 reads of eptk.reproduce.gather.Gathered: the converged stage's runs (another stage has none)."""
    study = SimpleNamespace(model="smollm2", converged_arms=arms, arm_name=Study.arm_name,
                            out=Path("no-study-folder"),
                            scale=SimpleNamespace(converged={"steps": 600}, converged_seeds=tuple(range(10))))
    return SimpleNamespace(study=study, paths={},
                           missing_of=lambda stage: list(missing) if stage == "converged" else [],
                           tuned=lambda stage, **arm: list(runs.get(Study.arm_name(arm), []))
                           if stage == "converged" else [])


TABLE_KEYS = ["method", "step", "prior", "runs", "test_items", "score", "stall_rate", "score_without_stalls", "inside_share",
              "placed", "distance", "stopped_early", "best_step"]
COMPARISON_KEYS = ["method", "step", "delta_new_minus_data", "tost_p", "control_passes", "new_outside",
                   "delta_at_equal_val_loss"]


def test_every_pair_is_compared_at_its_own_step_size():
    res = C2.measure(gathered(study_runs()))
    comparisons = res["statistics"]["comparisons"]
    assert {m: sorted(steps) for m, steps in comparisons.items()} == \
        {"deep": ["--lr-scale none", "--lr-scale prior"], "soft": ["lr 0.001", "lr 0.01"]}
    for method, steps in comparisons.items():
        for step, c in steps.items():
            arm = next(a for a in arms() if a["method"] == method and C2.step_of(a) == step)
            data, new = (np.mean([level(dict(arm, prior=p)) + x for x in SPREAD]) for p in ("region:data",
                                                                                            "region:new"))
            assert c["delta"]["mean"] == pytest.approx(new - data, abs=0.3), (method, step)
            assert c["delta"]["lo"] < c["delta"]["mean"] < c["delta"]["hi"]
            assert c["control_passes"] and c["new_outside"] and c["tost"]["p"] < 0.05
    assert res["verdict"] == HOLDS, res["why"]
    assert res["statistics"]["converged_share"] == 1.0
    assert res["statistics"]["budget"] == 1200          # amendment 1's first round: every run settled by it
    assert "version 2's budget" not in res["why"]
    assert [(r["method"], r["step"], r["prior"]) for r in res["figure"]["table"]] == \
        [(a["method"], C2.step_of(a), a["prior"]) for a in arms()]
    assert sorted(res["figure"]) == ["comparisons", "continued_runs", "seeds", "table"]
    assert all(list(row) == TABLE_KEYS for row in res["figure"]["table"])
    first = res["figure"]["table"][0]
    assert first["runs"] == 10 and first["stopped_early"] == 1.0 and first["best_step"] == 200.0
    assert first["inside_share"] == 0.9 and first["distance"] == 1.0 and first["stall_rate"]["mean"] == 0.0
    assert first["score"]["mean"] == first["score_without_stalls"]["mean"] == pytest.approx(80.0)
    rows = res["figure"]["comparisons"]
    assert all(list(row) == COMPARISON_KEYS for row in rows)
    assert len(rows) == 4 and all(r["control_passes"] and r["new_outside"] for r in rows)
    for row in rows:
        c = comparisons[row["method"]][row["step"]]
        assert row["delta_new_minus_data"] is c["delta"] and row["tost_p"] == c["tost"]["p"]
        assert row["delta_at_equal_val_loss"] is c["at_equal_val_loss"]
    assert {r["step"] for r in rows} == {"--lr-scale none", "--lr-scale prior", "lr 0.001", "lr 0.01"}


def test_an_arm_s_summary():
    arm = arms()[0]
    runs = [run(arm, 0, 80.0, inside=0.5, distance=1.0, best_step=100),
            run(arm, 1, 90.0, inside=0.5, distance=2.0, best_step=200, stopped=False, budget=600),
            run(arm, 2, 2.0, inside=1.0, distance=10.0, best_step=600, loss=0.6)]        # stalled: loss ≥ 0.6
    s = C2.arm_summary(runs)
    assert s["runs"] == 3 and s["scores"] == [80.0, 90.0, 2.0]
    assert s["inside_share"] == pytest.approx(2 / 3)          # the mean share, not the median (0.5)
    assert s["distance"] == 2.0                               # the median distance, not the mean (4.33)
    assert s["best_step"] == 200.0
    assert s["stopped_early"] == pytest.approx(2 / 3)
    assert s["stall_rate"]["mean"] == pytest.approx(1 / 3) and s["stall_rate"]["n"] == 3
    assert s["score"]["mean"] == pytest.approx((80 + 90 + 2) / 3)
    assert s["score_without_stalls"]["mean"] == pytest.approx(85.0)   # the stalled run left out
    assert s["best_val"] == pytest.approx([0.1, 0.1, 0.6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # (numpy warns on the mean of nothing)
        unplaced = C2.arm_summary([TunedRun("r", "soft", "region:new", 0, score=50.0, items=[1.0, 0.0])])
    assert math.isnan(unplaced["inside_share"]) and math.isnan(unplaced["distance"])
    assert math.isnan(unplaced["best_step"]) and math.isnan(unplaced["stopped_early"])


def test_a_new_region_far_below_the_data_s_does_not_hold():
    runs = study_runs()
    for arm in arms():
        if arm["method"] == "deep" and arm["prior"] == "region:new":
            runs[Study.arm_name(arm)] = [run(arm, s, 50.0 + x, inside=0.0) for s, x in
                                         enumerate(SPREAD)]
    res = C2.measure(gathered(runs))
    assert res["verdict"] == FAILS and res["why"].startswith("deep: Δ below −10")


def test_a_failed_positive_control_leaves_its_step_size_unread():
    runs = study_runs()
    for arm in arms():
        if arm["method"] == "soft" and arm["prior"] == "region:data":      # both soft step sizes
            runs[Study.arm_name(arm)] = [
                run(arm, r.seed, r.score, inside=0.49) for r in runs[Study.arm_name(arm)]]
    res = C2.measure(gathered(runs))
    assert res["verdict"] == UNSURE and "control fails" in res["why"]
    rows = {(r["method"], r["step"]): r for r in res["figure"]["comparisons"]}
    assert not rows["soft", "lr 0.01"]["control_passes"] and rows["deep", "--lr-scale none"]["control_passes"]


def test_seeds_short_of_the_power_rule_read_not_measured():
    runs = study_runs()
    name = Study.arm_name(arms()[-1])
    runs[name] = runs[name][:9]
    res = C2.measure(gathered(runs))
    assert res["verdict"] == NOT_MEASURED
    assert res["why"] == f"seeds the power rule asks for are not all in: {name} needs 10 seeds (has 9)"
    # a wider spread asks for more than the first ten
    wide = study_runs()
    wide[name] = [run(arms()[-1], s, 60.0 + 8 * x, inside=0.0) for s, x in
                  enumerate(SPREAD)]
    res = C2.measure(gathered(wide))
    need = res["statistics"]["seeds"][name]
    sd = np.std([8 * x for x in SPREAD], ddof=1)
    assert need["n"] > 10 and need["sd"] == pytest.approx(sd)
    # the report's seeds table shows that reasoning per arm: n = 2·(z_.95 + z_.90)²·SD²/10² for the TOST and
    # 2·(z_.975·SD/5)² for a ±5 interval, rounded up; the larger, at least 10 and at most 20, is asked
    from scipy.stats import norm
    last = arms()[-1]
    row = next(r for r in res["figure"]["seeds"] if (r["method"], r["step"], r["prior"]) ==
               (last["method"], C2.step_of(last), last["prior"]))
    tost = math.ceil(2 * (norm.ppf(0.95) + norm.ppf(0.9)) ** 2 * sd ** 2 / 100)
    interval = math.ceil(2 * (norm.ppf(0.975) * sd / 5) ** 2)
    assert row == {"method": "soft", "step": "lr 0.001", "prior": "region:new", "runs": 10,
                   "score_sd": pytest.approx(sd), "seeds_for_tost": tost, "seeds_for_interval": interval,
                   "seeds_asked": min(20, max(10, tost, interval)), "capped": max(tost, interval) > 20}
    # an arm short of its first seeds has no SD-based need yet: it is asked its first ten
    short = next(r for r in C2.measure(gathered(runs))["figure"]["seeds"] if r["runs"] == 9)
    assert short["seeds_asked"] == 10 and math.isnan(short["seeds_for_tost"]) and not short["capped"]


def test_an_arm_with_no_finished_run_reads_not_measured():
    runs = study_runs()
    name = Study.arm_name(arms()[0])
    del runs[name]
    res = C2.measure(gathered(runs, missing=[f"{name}-s{s}" for s in range(10)]))
    assert res["verdict"] == NOT_MEASURED
    assert f"{name} has no finished run" in res["why"] and res["missing"] == [f"{name}-s{s}" for s in range(10)]
    assert "deep" in res["statistics"]["comparisons"] and "--lr-scale prior" not in res["statistics"]["comparisons"]["deep"]


def test_runs_short_of_the_round_s_budget_read_not_measured():
    runs = study_runs()
    name = Study.arm_name(arms()[2])
    runs[name][3] = run(arms()[2], 3, level(arms()[2]), stopped=False)     # used its whole 600 steps
    res = C2.measure(gathered(runs))
    assert res["verdict"] == NOT_MEASURED
    assert res["statistics"]["budget"] == 1200 and res["statistics"]["continuing"] == [f"{name}-s3"]
    assert res["why"].startswith("1 of 80 runs are still short of the round's budget of 1,200 steps")
    assert res["statistics"]["first_budget"] == {"steps": 600, "converged_share": pytest.approx(79 / 80)}
    # that arm waits for its continuation: it needs the seeds it started with, whatever its spread
    for arm in (arms()[2], arms()[5]):                      # a deep arm and a soft one ("-s" in "-soft" too)
        name = Study.arm_name(arm)
        wide = [run(arm, s, 60.0 + 8 * x, stopped=s != 3) for s, x in
                enumerate(SPREAD)]
        assert C2.measure(gathered(dict(runs, **{name: wide})))["statistics"]["seeds"][name]["n"] == 10
        wide[3] = run(arm, 3, 60.0, stopped=True)                        # settled: the spread asks for more
        assert C2.measure(gathered(dict(runs, **{name: wide})))["statistics"]["seeds"][name]["n"] > 10


def test_a_first_budget_below_90_percent_says_it_was_superseded():
    runs = study_runs(stopped=False, budget=1200)
    for name in list(runs)[:1]:
        runs[name] = [run(arms()[0], s, r.score, inside=0.9, budget=1200, step=900) for s, r in enumerate(runs[name])]
    res = C2.measure(gathered(runs))
    first = res["statistics"]["first_budget"]
    assert first["steps"] == 600 and first["converged_share"] == 0.0
    assert res["why"].startswith("70 of 80 runs are still short of the round's budget of 1,800")  # kept before it
    assert "version 2's budget of 600 steps: 0% of runs stopped early" in res["why"]
    assert "now at 1,800 steps" in res["why"]   # 10 of 80 stopped by 1,200: the next round
    # a round moves on only once every run of the claim has finished: with some not in, it stays at 1,200
    res = C2.measure(gathered(runs, missing=["v2-arith-soft-region-new-lr0.001-s10"]))
    assert res["statistics"]["budget"] == 1200 and "now at 1,200 steps" in res["why"]


def test_version_2_s_share_reads_the_version_2_run_not_a_continuation_trained_again(tmp_path):
    """A continuation trained again from step 0 on another machine stopped at step 300 where its version-2 run
    used all 600 steps: version 2's share counts the version-2 run (it did not stop), the round reads the
    continuation."""
    runs = study_runs()
    arm = arms()[0]
    name = Study.arm_name(arm)
    again = run(arm, 0, 80.0, step=300, budget=1200)                   # stopped at 300 on its new trajectory
    runs[name][0] = again
    v2 = RunDir(tmp_path / again.name)
    v2.path.mkdir()
    v2.write_eval({"tuned": {"score": 80.0}, "early_stop": {"stopped": False, "step": 600, "best_step": 600}})
    g = gathered(runs)
    g.study.out = tmp_path
    before = C2.measure(g)["statistics"]["first_budget"]["converged_share"]
    g.paths = {again.name: tmp_path / ("v3-" + again.name.removeprefix("v2-"))}
    assert C2.measure(g)["statistics"]["first_budget"]["converged_share"] == pytest.approx(before - 1 / 80)
    assert C2.measure(g)["statistics"]["converged_share"] == pytest.approx(before)    # the round: the continuation


def test_a_run_parked_mid_continuation_keeps_the_round_it_passed(tmp_path):
    """A continuation of the 1,800-step round parked at a session's end has no eval.json (it dropped its 1,200-step
    one): the report reads the run where its version-2 folder stands, but the round stays at 1,800 with the run
    short of it, not back at 1,200 with that run the only one short."""
    runs = study_runs(stopped=False, budget=1200)
    for name in list(runs)[:1]:                          # 10 of 80 stopped by 1,200: the 1,800-step round
        runs[name] = [run(arms()[0], s, r.score, inside=0.9, budget=1200, step=900) for s, r in enumerate(runs[name])]
    arm = arms()[3]
    parked = runs[Study.arm_name(arm)][2] = run(arm, 2, 70.0, stopped=False)            # its version-2 folder
    continued = tmp_path / ("v3-" + parked.name.removeprefix("v2-"))
    continued.mkdir()
    (continued / "config.json").write_text(json.dumps({"steps": 1800}))
    g = gathered(runs)
    g.study.out = tmp_path
    stats = C2.measure(g)["statistics"]
    assert stats["budget"] == 1800 and len(stats["continuing"]) == 70 and parked.name in stats["continuing"]


@pytest.mark.parametrize("stopped, superseded", [(71, True), (72, False)])
def test_version_2_s_verdict_is_superseded_below_90_percent_stopped_at_600(stopped, superseded):
    runs = study_runs()
    late = [(name, i) for name in runs for i in range(10)][:80 - stopped]     # stopped by 1,200, not by 600
    for name, i in late:
        r = runs[name][i]
        runs[name][i] = run(next(a for a in arms() if Study.arm_name(a) == name), i, r.score,
                            inside=r.extra["position"]["inside_share"], step=900, budget=1200)
    res = C2.measure(gathered(runs))
    assert res["statistics"]["first_budget"]["converged_share"] == pytest.approx(stopped / 80)
    assert ("version 2's budget of 600 steps" in res["why"]) is superseded


def test_the_verdict_s_reason_names_each_comparison():
    data = {"control_passes": True, "new_outside": True, "delta": {"mean": -1.234, "lo": -3.21, "hi": 0.5, "n": 20},
            "tost": {"p": 0.000123}}
    text = C2.decide({"deep": {"--lr-scale none": data,
                               "--lr-scale prior": dict(data, control_passes=False, new_outside=False)}}, 0.95)[1]
    assert text == ("deep --lr-scale none: Δ -1.2 [-3.2, 0.5], TOST p 0.000123; "
                    "deep --lr-scale prior: Δ -1.2 [-3.2, 0.5], TOST p 0.000123, control fails, region:new not outside")
    below = dict(data, delta={"mean": -20.0, "lo": -30.0, "hi": -10.0, "n": 20}, tost={"p": 0.9})
    assert C2.decide({"deep": {"a": below}}, 0.95)[0] == UNSURE          # an upper bound at −10 is not below it
    below["delta"]["hi"] = -10.001
    verdict, why = C2.decide({"deep": {"a": below}, "soft": {"a": below}}, 0.95)
    assert verdict == FAILS and why.startswith("deep, soft: Δ below −10 at every readable step size; deep a: Δ")


def test_a_run_not_placed_is_a_missing_input_not_left_out_of_its_arm_s_share():
    # a report written where some runs' data statistics are not at hand: their positions are unknown, and the
    # positive control's share must not be read from the runs that happen to be placed
    runs = study_runs()
    data = next(a for a in arms() if a["prior"] == "region:data" and a["method"] == "deep")
    name = Study.arm_name(data)
    runs[name][4].extra["position"] = None
    res = C2.measure(gathered(runs))
    assert res["verdict"] == NOT_MEASURED and res["provisional"] == HOLDS
    assert res["missing"] == [f"positions/{name}-s4"]
    row = next(r for r in res["figure"]["table"] if r["method"] == "deep" and r["step"] == C2.step_of(data)
               and r["prior"] == "region:data")
    assert row["runs"] == 10 and row["placed"] == 9
    # the reason says how to place it: its recorded statistics made again, by its own task and seed
    assert res["why"].endswith("1 run(s) not placed: the data statistics they recorded are not in this machine's "
                               "cache (`eptk capture --model smollm2 --task arith --seed 4` makes them again)")
    assert C2.measure(gathered(study_runs()))["verdict"] == HOLDS     # every run placed: read as it is


def test_the_placing_hint_names_each_capture_once_with_the_samples_the_run_recorded():
    arm = arms()[0]
    runs = [run(arm, 2, 80.0), run(arm, 2, 81.0), run(arm, 7, 80.0)]
    runs[2].extra["stats_samples"] = 512
    assert C2.placing_hint("gemma3-270m", runs) == (
        "3 run(s) not placed: the data statistics they recorded are not in this machine's cache "
        "(`eptk capture --model gemma3-270m --task arith --seed 2`; "
        "`eptk capture --model gemma3-270m --task arith --seed 7 --samples 512` makes them again)")


def test_with_no_run_in_it_claim_2_names_what_is_missing():
    res = C2.measure(gathered({}, missing=["v2-a-s0", "v2-b-s0"]))
    assert res["claim"] == "2" and res["verdict"] == NOT_MEASURED and res["missing"] == ["v2-a-s0", "v2-b-s0"]
    assert res["why"] == "missing 2: v2-a-s0, v2-b-s0"


def test_each_reason_for_not_measured_is_kept():
    runs = study_runs()
    short = [Study.arm_name(a) for a in arms()[-2:]]
    for name in short:
        runs[name] = runs[name][:9]
    soft = arms()[4]
    runs[Study.arm_name(soft)][3] = run(soft, 3, level(soft), stopped=False, inside=0.9)
    why = C2.measure(gathered(runs))["why"]
    assert why == (f"1 of 78 runs are still short of the round's budget of 1,200 steps (RULES.md amendment 1); "
                   f"seeds the power rule asks for are not all in: {short[0]} needs 10 seeds (has 9); "
                   f"{short[1]} needs 10 seeds (has 9)")
    # no seeds short: the reason is the budget's alone
    runs = study_runs()
    runs[Study.arm_name(soft)][3] = run(soft, 3, level(soft), stopped=False, inside=0.9)
    assert C2.measure(gathered(runs))["why"] == ("1 of 80 runs are still short of the round's budget of 1,200 steps "
                                                 "(RULES.md amendment 1)")


def test_claim_2_draws_its_scores_and_its_stall_rates(tmp_path):
    res = C2.measure(gathered(study_runs()))
    paths = C2.draw(res, tmp_path / "figures")
    assert [p.name for p in paths] == ["claim2.png", "claim2_stalls.png"]
    images = [p.read_bytes() for p in paths]
    assert all(image.startswith(b"\x89PNG\r\n\x1a\n") for image in images) and images[0] != images[1]
    # each is the table's bars of its own column, with its own labels (the PNGs are byte-for-byte reproducible)
    from eptk.reproduce.figures import table_bars
    labels = ("method", "step", "prior")
    expected = [table_bars(res["figure"]["table"], "score", f"test exact match (%), {ITEMS} items per run",
                           "Claim 2: score by prior and step size", tmp_path / "a.png", label_keys=labels),
                table_bars(res["figure"]["table"], "stall_rate", "stalled runs (share)", "Claim 2: stall rate by arm",
                           tmp_path / "b.png", label_keys=labels)]
    assert images == [p.read_bytes() for p in expected]
    assert C2.draw({"figure": {}}, tmp_path / "none") == [] and not (tmp_path / "none").exists()


def test_the_items_each_run_was_scored_on_are_the_ones_measured_not_the_ones_asked():
    # the rules ask 1,000 test items; arith:+:2's test split holds 865, and the table and axis say so
    runs = study_runs()
    first = Study.arm_name(arms()[0])
    runs[first][3].items = runs[first][3].items[:150]
    table = C2.measure(gathered(runs))["figure"]["table"]
    assert [row["test_items"] for row in table] == ["150-200"] + [f"{ITEMS}"] * (len(table) - 1)
    assert C2.score_label(table) == f"test exact match (%), 150-200 or {ITEMS} items per run"
    assert C2.items_range([865, 865, 1000]) == "865-1,000" and C2.items_range([]) == ""
    assert C2.score_label([{"test_items": ""}]) == "test exact match (%)"


def test_the_difference_at_equal_validation_loss_is_the_arm_s_coefficient():
    """score = b0 + b1·[region:new] + b2·loss by least squares, with its 95% t interval (n − 3 degrees of freedom),
    computed here from the normal equations; a run without a score leaves its loss out too."""
    from scipy.stats import t as student

    data = {"scores": [80.0, 82.0, 79.0, 85.0, 81.0], "best_val": [0.30, 0.20, 0.35, 0.10, 0.25, 0.9]}
    new = {"scores": [70.0, 75.0, 72.0, 69.0], "best_val": [0.40, 0.25, 0.30, 0.45]}
    got = C2.equal_loss_difference(data, new)
    y = np.array(data["scores"] + new["scores"])
    x = np.column_stack([np.ones(9), [0] * 5 + [1] * 4, data["best_val"][:5] + new["best_val"]])
    beta = np.linalg.solve(x.T @ x, x.T @ y)
    residual = y - x @ beta
    se = math.sqrt(residual @ residual / (9 - 3) * np.linalg.inv(x.T @ x)[1, 1])
    half = student.ppf(0.975, 9 - 3) * se
    assert got["n"] == 9 and got["mean"] == pytest.approx(beta[1])
    assert (got["lo"], got["hi"]) == pytest.approx((beta[1] - half, beta[1] + half))
    # at the same losses the raw gap (−9.6) shrinks: the loss carries part of it
    assert abs(got["mean"]) < abs(np.mean(new["scores"]) - np.mean(data["scores"][:5]))
    for few in ({"scores": [80.0, 81.0], "best_val": [0.1, 0.2]}, {"scores": [80.0], "best_val": [0.1]}):
        small = C2.equal_loss_difference(few, {"scores": [70.0], "best_val": [0.3]})
        assert math.isnan(small["mean"]) and math.isnan(small["lo"]) and math.isnan(small["hi"])
    assert C2.equal_loss_difference(data, dict(new, best_val=[0.4, 0.25, math.nan, 0.45]))["n"] == 9
    assert math.isnan(C2.equal_loss_difference(data, dict(new, best_val=[0.4, 0.25, math.nan, 0.45]))["mean"])
    four = C2.equal_loss_difference({"scores": [80.0, 82.0], "best_val": [0.3, 0.2]},
                                    {"scores": [70.0, 75.0], "best_val": [0.4, 0.25]})
    assert four["n"] == 4 and math.isfinite(four["mean"])


def test_a_continued_run_s_row_shows_both_budgets(tmp_path):
    """The table of continued runs (amendment 1): the version-2 run's score (from its kept items, else its own
    score) and best step at 600 steps, beside the continuation's budget, stop and score; a run read from its own
    version-2 folder, or with no folder, has no row."""
    arm = arms()[0]
    name = f"{Study.arm_name(arm)}-s0"
    first = RunDir(tmp_path / name)
    first.path.mkdir()
    first.write_eval({"tuned": {"score": 12.5}, "early_stop": {"stopped": False, "step": 600, "best_step": 575}},
                     [{"exact_match": v} for v in (1, 0, 0, 0)])
    # its metrics: the prior's row, training rows, and the final row that scores the best prompt (not step 600's)
    for row in ({"step": 0, "val_loss": 7.0}, {"step": 25, "loss": 2.0, "val_loss": 1.5},
                {"step": 600, "loss": 0.3, "val_loss": 0.2}, {"step": 600, "val_loss": 0.1}):
        first.log(row)
    continued = run(arm, 0, 90.0, stopped=True, step=900, best_step=800, budget=1200)
    continued.val = [(0, 7.0), (25, 1.5), (600, 0.2), (800, 0.05)]   # resumed from step 600: the same first steps
    later = run(arm, 1, 85.0, stopped=False, budget=1200)
    later.val = [(0, 7.0), (25, 1.6), (600, 0.3)]                     # trained again, on another trajectory
    unmoved = run(arm, 2, 80.0)
    g = gathered({})
    g.study.out = tmp_path
    g.paths = {name: tmp_path / f"v3-{name.removeprefix('v2-')}", later.name: tmp_path / f"v3-{later.name}",
               unmoved.name: tmp_path / unmoved.name}
    (tmp_path / later.name).mkdir()
    RunDir(tmp_path / later.name).write_eval({"tuned": {"score": 33.0}})
    for row in ({"step": 0, "val_loss": 7.0}, {"step": 25, "loss": 2.0, "val_loss": 1.5}):
        RunDir(tmp_path / later.name).log(row)
    rows = C2.continued_rows(g, [unmoved, continued, run(arm, 3, 70.0), later])   # rows after a skipped run too
    assert rows == [{"run": name, "score_at_first_budget": 25.0, "best_step_at_first_budget": 575, "budget": 1200,
                     "stopped_at": 900, "best_step": 800, "score": 90.0, "departs_at": None},
                    {"run": later.name, "score_at_first_budget": 33.0, "best_step_at_first_budget": None,
                     "budget": 1200, "stopped_at": None, "best_step": 200, "score": 85.0, "departs_at": 25}]


def test_a_continuation_departs_where_its_validation_loss_first_differs():
    first = [(0, 7.0), (25, 1.5), (50, 0.5), (75, 0.3)]
    assert C2.departs_at(first, first + [(100, 0.2)]) is None               # repeated, then went on
    assert C2.departs_at(first, [(0, 7.0), (25, 1.5), (50, 0.5000001), (75, 0.2)]) == 50   # exact, the first
    assert C2.departs_at(first, [(0, 7.0), (50, 0.5)]) is None              # steps it has no loss at are skipped
    assert C2.departs_at(first, [(0, 7.0000001), (25, 1.5)]) == 0           # the prior itself may differ
