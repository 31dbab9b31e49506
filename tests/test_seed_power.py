"""Claim 2's seeds per arm (RULES.md, "Seeds per arm (power)"): every arm runs the first 10 seeds, then grows to
what the power formulas ask of its observed score SD (at most 20), and the converged stage holds exactly those
runs, so `eptk reproduce --stages converged` trains the seeds the report waits for."""
from __future__ import annotations

import math

import pytest

from eptk.reproduce.claims.new_region import seed_plan
from eptk.reproduce.seed_power import CAP, arm_need, arm_seeds, score_of, seeds_needed
from eptk.reproduce.stages import Study
from eptk.runs import RunDir

STEADY = [86.0, 88.0, 90.0, 87.0, 89.0, 91.0, 85.0, 88.5, 89.5, 87.5]   # SD 1.9: the first 10 are enough
STALLED = [2.9] + STEADY[1:]                                           # one stall: SD 27, the cap


def item_rows(items: int, score: float) -> list[dict]:
    """`items` per-item rows whose exact match averages `score` (in %, rounded to a whole item)."""
    right = round(items * score / 100)
    return [{"exact_match": i < right} for i in range(items)]


def finish(study: Study, arm: str, seed: int, score: float, items: int = 200, *, steps: int = 600,
           stopped_at: int | None = -1, folder: str | None = None) -> None:
    """A finished run as `eptk tune` leaves it: config.json's budget (kept where the run has one), eval.json with
    its early-stopping record (stopped at `stopped_at`, -1: half its budget; None: it used its whole budget) and its
    per-item rows (score = their mean, in %)."""
    rows = item_rows(items, score)
    right = sum(r["exact_match"] for r in rows)
    run = RunDir(study.out / (folder or f"{arm}-s{seed}"))
    if not (run.path / "config.json").is_file():
        run.write_config({"name": run.path.name, "seed": seed, "steps": steps})
    steps = run.config()["steps"]
    stopped_at = steps // 2 if stopped_at == -1 else stopped_at
    stop = {"stopped": True, "step": stopped_at} if stopped_at else {"stopped": False, "step": steps}
    run.write_eval({"split": "test", "tuned": {"score": 100.0 * right / items}, "early_stop": stop}, rows)


def evaluation(run: RunDir, items: int, score: float, *, name: str | None = None, split: str | None = "test",
               kept: bool = True) -> None:
    """One evaluation of a finished run (eval.json, or eval-<name>.json as `eptk eval --save` writes it): its
    summary score and, where `kept`, its per-item rows."""
    summary = {"tuned": {"score": score}, **({"split": split} if split else {})}
    run.write_eval(summary, item_rows(items, score) if kept else None, name=name)


def fill(study: Study, scores: dict[str, list[float]]) -> Study:
    """Every arm finished at seeds 0.. with the given scores (STEADY where none is given); the study built again."""
    for arm in map(study.arm_name, study.converged_arms()):
        for seed, score in enumerate(scores.get(arm, STEADY)):
            finish(study, arm, seed, score)
    return Study.build(study.model, study.out)


def names(study: Study) -> list[str]:
    return [r.name for r in study.stage_runs["converged"]]


@pytest.fixture
def study(tmp_path) -> Study:
    return Study.build("smollm2", tmp_path)


def test_an_arm_grows_only_after_its_first_seeds_and_by_the_formulas():
    assert arm_need(STALLED[:9], 9, 10)["n"] == 10              # 9 of 10 in: no formula yet, whatever the SD
    assert arm_need(STEADY, 10, 10)["n"] == 10
    stalled = arm_need(STALLED, 10, 10)
    assert stalled["n"] == CAP == 20 and stalled["sd"] == pytest.approx(27.086, abs=0.001)
    between = arm_need([74.0, 86.0] * 5, 10, 10)              # SD 6.32: the width formula decides, 12.3 -> 13
    assert between["n"] == math.ceil(between["width"]) == 13 and between["tost"] < between["width"]
    assert not between["capped"]
    assert math.isnan(arm_need([90.0], 1, 1)["sd"]) and arm_need([90.0], 1, 1)["n"] == 1


def test_the_power_formulas_against_hand_computed_values():
    """RULES.md's two formulas at their stated defaults (margin 10, half-width 5, α 0.05, power 0.8), with the
    z-values written out: TOST n = 2·SD²·(z.95 + z.90)²/margin², width n = 2·(z.975·SD/half-width)²."""
    z_tost, z_width = 1.6448536 + 1.2815516, 1.9599640
    at10 = seeds_needed(10.0)
    assert at10["tost"] == pytest.approx(2 * 100 * z_tost ** 2 / 100, rel=1e-6)          # 17.13
    assert at10["width"] == pytest.approx(2 * (z_width * 10 / 5) ** 2, rel=1e-6)          # 30.73
    assert at10["n"] == CAP and at10["capped"]                                            # 31 > 20
    exactly = seeds_needed(8.0)                                   # width 19.67 -> 20: at the cap, not over it
    assert exactly["n"] == CAP and not exactly["capped"]
    # a margin tighter than the half-width: the TOST decides (10.96 -> 11; the width asks 4.92)
    tight = seeds_needed(4.0, margin=5.0)
    assert tight["tost"] == pytest.approx(2 * 16 * z_tost ** 2 / 25, rel=1e-6) and tight["n"] == 11

def test_the_stage_holds_the_first_seeds_of_every_arm_then_the_seeds_an_arm_needs(study):
    arms = [study.arm_name(a) for a in study.converged_arms()]
    assert names(study) == [f"{a}-s{s}" for s in range(10) for a in arms]       # nothing run yet: 10 each
    stalled = "v2-arith-deep-last3-region-new-lrsnone"
    grown = fill(study, {stalled: STALLED})
    assert arm_seeds(grown) == {a: (20 if a == stalled else 10) for a in arms}
    assert names(grown) == names(study) + [f"{stalled}-s{s}" for s in range(10, 20)]   # after every first seed
    assert [r.index for r in grown.stage_runs["converged"]] == list(range(90))
    assert {r.settings["seed"] for r in grown.runs("converged", prior="region:new", lr_scale="none")} == set(range(20))
    assert len(grown.runs("converged", prior="region:data", lr_scale="none")) == 10


def test_each_arm_grows_on_its_own_runs_once_its_first_seeds_are_in(tmp_path):
    """One arm with 9 of 10 in does not hold back a complete arm's growth, nor grows itself, stall or not."""
    stalled, short = "v2-arith-deep-last3-region-new-lrsnone", "v2-arith-soft-region-data-lr0.01"
    grown = fill(Study.build("smollm2", tmp_path / "a"), {stalled: STALLED, short: STEADY[:9]})
    assert arm_seeds(grown)[stalled] == 20 and arm_seeds(grown)[short] == 10
    steady = fill(Study.build("smollm2", tmp_path / "b"), {stalled: STALLED[:9]})
    assert f"{stalled}-s9" in names(steady) and f"{stalled}-s10" not in names(steady)


def test_an_arm_grows_on_its_runs_re_evaluated_items_or_their_summaries(tmp_path):
    """The power rule reads each run's score where the report does: its largest kept test evaluation (here a
    re-evaluation on 1,000 items that finds a stall the first evaluation did not), else its summary's score (runs
    that kept no items)."""
    arm = "v2-arith-deep-last3-region-new-lrsnone"
    grown = fill(Study.build("smollm2", tmp_path / "a"), {})
    for seed, score in enumerate(STALLED):
        evaluation(RunDir(grown.out / f"{arm}-s{seed}"), 1000, score, name="test-1000")
    assert arm_seeds(Study.build("smollm2", grown.out))[arm] == 20
    summaries = fill(Study.build("smollm2", tmp_path / "b"), {})
    for seed, score in enumerate(STALLED):
        run = RunDir(summaries.out / f"{arm}-s{seed}")
        (run.path / "predictions.jsonl").unlink()
        run.write_eval(dict(run.eval(), tuned={"score": score}))
    assert arm_seeds(Study.build("smollm2", summaries.out))[arm] == 20


def test_a_quick_study_holds_one_seed_per_arm_before_any_run(tmp_path):
    """The quick study's arms start with one seed (seed 0), not more, while nothing has finished."""
    quick = Study.build("tiny", tmp_path, quick=True)
    assert len(quick.scale.converged_seeds) == 1
    assert set(arm_seeds(quick).values()) == {1}
    assert {r.settings["seed"] for r in quick.stage_runs["converged"]} == {0}

def test_a_finished_run_is_never_dropped_when_the_sd_asks_for_fewer(study):
    """An arm grown to 20 whose later seeds narrowed its SD: every finished seed stays in the stage and the report."""
    arm = "v2-arith-soft-region-new-lr0.01"
    grown = fill(study, {arm: STEADY})
    finish(grown, arm, 12, 88.0)                     # e.g. trained while an earlier SD asked for 13
    again = Study.build("smollm2", grown.out)
    assert arm_seeds(again)[arm] == 13
    assert [n for n in names(again) if n.startswith(arm)] == [f"{arm}-s{s}" for s in range(13)]


def test_under_the_amendment_an_arm_grows_on_its_runs_as_they_are_at_the_round_s_budget(study):
    """RULES.md amendment 1: the power rule reads each run at the round's budget. An arm one of whose runs used the
    whole 600 steps without stopping keeps its 10 seeds until that run's continuation (its `v3-` folder, trained
    to 1,200) has finished; then the continuation's score counts, not the version-2 one."""
    arm = "v2-arith-deep-last3-region-new-lrsnone"
    grown = fill(study, {arm: STALLED})
    assert arm_seeds(grown)[arm] == 20                      # every run stopped early: the stall's SD asks for 20
    finish(grown, arm, 0, STALLED[0], stopped_at=None)       # seed 0 (the stall) ran out its 600 steps instead
    assert arm_seeds(Study.build("smollm2", grown.out))[arm] == 10   # short of the round's 1,200: no growth yet
    continued = "v3-" + arm.removeprefix("v2-") + "-s0"
    finish(grown, arm, 0, 88.0, steps=1200, stopped_at=800, folder=continued)   # continued: it converged at 800
    assert arm_seeds(Study.build("smollm2", grown.out))[arm] == 10   # the SD of the scores at 1,200: 1.9, no growth
    finish(grown, arm, 0, STALLED[0], steps=1200, stopped_at=None, folder=continued)  # or still stalled at 1,200
    assert arm_seeds(Study.build("smollm2", grown.out))[arm] == 20   # settled at the round's budget: grows


def test_a_round_ends_only_once_the_seeds_it_grew_are_in(study):
    """Every run settled at 1,200 steps and fewer than 90% stopped early: the next round (1,800) may begin only
    after the seeds the rule asks at 1,200 are in. An arm whose 10 runs all ran to 1,200 without stopping, with a
    stall among them (SD 27), grows to 20 at 1,200 and the round stays at 1,200; the stage does not wait for
    1,800 to grow it (87.5% stopped early: the round would move on without its 10 further seeds)."""
    from eptk.reproduce.budget import to_continue

    arm = "v2-arith-soft-region-new-lr0.01"
    grown = fill(study, {})                                    # the other 70 runs stopped early
    for seed, score in enumerate(STALLED):
        finish(grown, arm, seed, score, stopped_at=None)       # 600 steps without stopping, then continued
        finish(grown, arm, seed, score, steps=1200, stopped_at=None, folder=f"v3-{arm.removeprefix('v2-')}-s{seed}")
    again = Study.build("smollm2", grown.out)
    assert arm_seeds(again)[arm] == 20
    budget, todo = to_continue(grown.out, names(again), 600)
    assert (budget, todo) == (1200, [])                        # seeds 10-19 to train first; nothing to continue yet


def test_the_report_waits_for_the_seeds_the_stage_grows(study):
    """Claim 2's seed plan and the stage read one rule: the arm's scores, runs and first seeds give the same n."""
    stalled, short = "v2-arith-deep-last3-region-new-lrsnone", "v2-arith-soft-region-new-lr0.001"
    given = {stalled: STALLED, short: STALLED[:9]}
    grown = fill(study, given)

    class G:   # the one part of Gathered that seed_plan reads
        study = grown
    summaries = {a: ({}, {"scores": given.get(a, STEADY), "runs": len(given.get(a, STEADY))}) for a in arm_seeds(grown)}
    plan = {a: p["n"] for a, p in seed_plan(G, summaries).items()}
    assert plan == arm_seeds(grown) and plan[stalled] == 20 and plan[short] == 10
    # one of the stalled arm's runs used its whole 600 steps: the stage waits for its continuation, so does the report
    finish(grown, stalled, 3, STALLED[3], stopped_at=None)
    waiting = seed_plan(G, summaries, [f"{stalled}-s3"])
    assert {a: p["n"] for a, p in waiting.items()} == arm_seeds(Study.build("smollm2", grown.out)) == \
        dict(plan, **{stalled: 10})


def test_the_converged_stage_trains_the_seeds_the_rule_adds_and_stops(tmp_path, monkeypatch):
    """`eptk reproduce --stages converged` goes on once an arm's first seeds are in: a tiny study whose arms start
    with 2 seeds, one arm's two finished runs far apart (0 and 100%, the others alike): its third seed is listed,
    trained and read, and the stage stops there (at the cap of 3 set here)."""
    import dataclasses
    import io

    from rich.console import Console

    from eptk.reproduce import seed_power
    from eptk.reproduce.run import run_training
    from eptk.reproduce.stages import QUICK

    monkeypatch.setattr(seed_power, "CAP", 3)
    study = Study.build("tiny", tmp_path, quick=True)
    study.scale = dataclasses.replace(QUICK, converged_seeds=(0, 1))
    study.regrow_converged()
    assert len(names(study)) == 16                   # as the stage starts, nothing run: 2 seeds each
    wide = "v2-arith-soft-region-data-lr0.01"
    for run in study.stage_runs["converged"]:        # then the first seeds finish (here: written, settings and all)
        RunDir(tmp_path / run.name).write_config(dict(run.settings, name=run.name))
        finish(study, run.name.rsplit("-s", 1)[0], run.settings["seed"],
               [0.0, 100.0][run.settings["seed"]] if run.name.startswith(wide) else 50.0, items=8)
    out = io.StringIO()
    assert run_training(study, "converged", jobs=1, shard=None, progress=False, console=Console(file=out)) == 0
    assert f"the power rule (RULES.md) adds 1 converged run: {wide}-s2" in " ".join(out.getvalue().split())
    assert RunDir(tmp_path / f"{wide}-s2").is_complete() and not (tmp_path / f"{wide}-s3").exists()
    assert names(study)[-1] == f"{wide}-s2" and len(names(study)) == 17


def test_the_frozen_checkouts_patch_carries_main_s_rule():
    """docs/findings/background/seed-power.patch gives the checkouts that train the study the rule the report reads:
    its seed_power.py is this one but for the bootstrap floor (those checkouts predate inference.py), and its
    `_converged` lists runs as this one does."""
    import inspect
    from pathlib import Path

    from eptk.reproduce import seed_power

    root = Path(__file__).resolve().parents[1]
    patch = (root / "docs/findings/background/seed-power.patch").read_text()
    new_file = patch.split("+++ b/eptk/reproduce/seed_power.py\n", 1)[1].split("\ndiff --git", 1)[0]
    body = "".join(line[1:] + "\n" for line in new_file.splitlines() if line.startswith("+"))
    here = inspect.getsource(seed_power).replace(
        "from .inference import MIN_BOOTSTRAP_GROUPS\n",
        "MIN_BOOTSTRAP_GROUPS = 10   # a bootstrap's groups (main's inference.MIN_BOOTSTRAP_GROUPS)\n")
    assert body == here
    from eptk.reproduce import budget   # seed_power reads the rounds from budget.py: the patch carries it whole
    new_file = patch.split("+++ b/eptk/reproduce/budget.py\n", 1)[1].split("\ndiff --git", 1)[0]
    assert "".join(line[1:] + "\n" for line in new_file.splitlines() if line.startswith("+")) == \
        inspect.getsource(budget)
    converged = inspect.getsource(Study._converged)
    added = "".join(line[1:] + "\n" for line in patch.split("+++ b/eptk/reproduce/stages.py\n", 1)[1].splitlines()
                    if line.startswith("+"))
    assert converged.split("        for i, run in enumerate(runs):")[0] in added
    assert "study._converged(study.scale.converged_seeds, arm_seeds(study))" in added


def test_a_run_is_scored_on_its_largest_kept_test_evaluation(tmp_path):
    """A run re-evaluated on more test items (`eptk eval --save`, e.g. the study's 1,000) is read on those: the
    evaluation with the most kept test items wins, one whose `split` is missing counts as a test evaluation (written
    before the field), validation evaluations and evaluations without their items are passed over."""
    from eptk.reproduce.seed_power import test_items   # here, or pytest would collect it as a test

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    evaluation(run, 1000, 80.0, split=None)                            # eval.json, from before `split` was kept
    evaluation(run, 300, 60.0, name="test-300")                        # fewer items: passed over
    evaluation(run, 2000, 10.0, name="validation-2000", split="validation")
    evaluation(run, 5000, 30.0, name="test-5000", kept=False)          # no items kept: nothing to read
    items, count = test_items(run.path)
    assert count == 1000 and len(items) == 1000 and sum(items) == 800
    assert score_of(items, run.eval()) == 80.0
    # the same read with eval.json the smaller one, an evaluation without items read before the largest, and a
    # tie of sizes: the first in reading order (eval.json, then by name) is kept
    later = RunDir(tmp_path / "later")
    later.path.mkdir()
    evaluation(later, 200, 50.0)
    evaluation(later, 5000, 30.0, name="test-0000", kept=False)
    evaluation(later, 1000, 70.0, name="test-1000")
    evaluation(later, 1000, 90.0, name="test-1000b")
    assert score_of(test_items(later.path)[0], later.eval()) == 70.0
    # a run that kept one item is read on it; one that kept none falls back on its summary's score
    one = RunDir(tmp_path / "one")
    one.path.mkdir()
    evaluation(one, 1, 100.0)
    assert test_items(one.path) == ([1.0], 1)
    none = RunDir(tmp_path / "none")
    none.path.mkdir()
    evaluation(none, 200, 42.0, kept=False)
    assert test_items(none.path) == ([], 0) and score_of([], none.eval()) == 42.0
    assert score_of([], {}) is None and score_of([], None) is None and score_of([], {"tuned": None}) is None
