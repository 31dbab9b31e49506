"""Claim 2's training budget by RULES.md amendment 1: rounds of 1,200, 1,800 and 2,400 steps continue the runs that
used their whole budget without stopping, until at least 90% of a model's claim-2 runs stopped early; the report
reads each run where it stands now (its finished `v3-` continuation, else its version-2 folder)."""
from __future__ import annotations

import json
import math

from eptk.reproduce.budget import (Standing, continued_name, current_path, reading, round_budget, rounds,
                                   to_continue)
from eptk.reproduce.claims.new_region import standing_of
from eptk.runs import RunDir

FIRST = 600


def at(budget: int, stop: int | None = None) -> Standing:
    """A finished run trained to `budget` steps that stopped early at `stop` (None: used its whole budget)."""
    return Standing(budget=budget, stopped=stop is not None, step=budget if stop is None else stop)


def test_the_rounds_are_twice_three_and_four_times_the_first_budget():
    assert rounds(FIRST) == (1200, 1800, 2400) and rounds(6) == (12, 18, 24)


def test_the_first_round_is_under_way_until_every_run_settled_at_its_budget():
    assert round_budget([at(600)] * 10, FIRST) == 1200               # version 2's runs: the first round begins
    assert round_budget([at(600, 400)] * 10, FIRST) == 1200          # every run stopped: nothing goes further
    short = [at(1200)] * 5 + [at(600)] + [at(600, 300)] * 4           # one run still at 600: the round goes on
    assert round_budget(short, FIRST) == 1200
    unfinished = [at(1200)] * 5 + [at(600, 300)] * 4 + [None]         # one run not finished yet
    assert round_budget(unfinished, FIRST) == 1200


def test_the_next_round_begins_below_90_percent_stopped_and_not_at_90():
    # 9 of 10 stopped by 1,200, one of them at its last validation (it stopped: the same under any budget)
    nine = [at(1200, 700 + 50 * i) for i in range(8)] + [at(1200, 1200), at(1200)]
    assert round_budget(nine, FIRST) == 1200
    eight = [at(1200, 900)] * 8 + [at(1200)] * 2                      # 8 of 10
    assert round_budget(eight, FIRST) == 1800
    # a run stopped after the round's budget did not stop by it: the share at 1,200 is still 8 of 10
    later = [at(1200, 900)] * 8 + [at(1800, 1250), at(1800)]
    assert round_budget(later, FIRST) == 1800
    last = [at(2400)] * 10                                            # the last round's share is read as it is
    assert round_budget(last, FIRST) == 2400


def test_the_reading_gives_the_share_at_the_round_and_at_version_2s_budget():
    standings = {"a": at(600, 400), "b": at(1200, 1100), "c": at(1200), "d": at(600)}
    r = reading(standings, unfinished=0, first=FIRST)
    assert r.budget == 1200 and r.continuing == ["d"]                 # d used its 600 steps: short of 1,200
    assert r.share == 0.5 and r.first_share == 0.25                    # stopped by 1,200: a, b; by 600: a
    done = reading(dict(standings, d=at(1200, 650)), unfinished=0, first=FIRST)
    # d stopped: 3 of 4 by 1,200, below 90%, so the next round asks c for 1,800 steps
    assert done.budget == 1800 and done.continuing == ["c"] and done.share == 0.75
    assert math.isnan(reading({}, unfinished=0, first=FIRST).share)


def finished(folder, budget: int, stop: int | None = None):
    """A run folder as `eptk tune` leaves it, as far as the budget rule reads it: config.json and eval.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"steps": budget}))
    early = {"stopped": stop is not None, "step": budget if stop is None else stop}
    RunDir(folder).write_eval({"split": "test", "tuned": {"score": 50.0}, "early_stop": early}, [{"exact_match": True}])


def test_to_continue_lists_the_runs_that_used_their_budget_and_where_they_go(tmp_path):
    names = ["v2-a-s0", "v2-b-s0", "v2-c-s0"]
    finished(tmp_path / "v2-a-s0", 600, 400)                      # stopped early: the same run under any budget
    finished(tmp_path / "v2-b-s0", 600)                           # used its budget: continued to 1,200
    finished(tmp_path / "v2-c-s0", 600)
    budget, todo = to_continue(tmp_path, names, FIRST)
    assert budget == 1200 and todo == [(tmp_path / f"v2-{x}-s0", tmp_path / f"v3-{x}-s0", 1200) for x in "bc"]
    # in the order the study lists its runs (seed-major), not by name: a run already under way comes first
    assert [dest.name for _, dest, _ in to_continue(tmp_path, names[::-1], FIRST)[1]] == ["v3-c-s0", "v3-b-s0"]
    finished(tmp_path / "v3-c-s0", 1200)                          # c continued
    budget, todo = to_continue(tmp_path, names, FIRST)
    assert budget == 1200 and todo == [(tmp_path / "v2-b-s0", tmp_path / "v3-b-s0", 1200)]
    (tmp_path / "v3-b-s0").mkdir()                                # a continuation under way (no eval.json yet)
    assert to_continue(tmp_path, names, FIRST)[1] == [(tmp_path / "v2-b-s0", tmp_path / "v3-b-s0", 1200)]
    finished(tmp_path / "v3-b-s0", 1200, 800)                     # b stopped: 2 of 3 stopped, below 90%
    budget, todo = to_continue(tmp_path, names, FIRST)
    assert budget == 1800 and todo == [(tmp_path / "v3-c-s0", tmp_path / "v3-c-s0", 1800)]   # in place


def test_a_later_round_s_continuations_under_way_keep_the_round_and_the_others_listed(tmp_path):
    """A continuation of the 1,800-step round drops its 1,200-step eval.json when it begins; while it trains, the
    round must stay at 1,800 with the other runs short of it still listed (read as the version-2 run, it would
    send the round back to 1,200 with itself the only run listed, and a second extend.sh would wait for it)."""
    import torch

    names = [f"v2-{x}-s0" for x in "abcd"]
    finished(tmp_path / "v2-a-s0", 600, 400)
    for x in "bcd":
        finished(tmp_path / f"v2-{x}-s0", 600)
        finished(tmp_path / f"v3-{x}-s0", 1200)                   # each used its 1,200 steps: 1 of 4 stopped
    assert to_continue(tmp_path, names, FIRST) == (1800, [(tmp_path / f"v3-{x}-s0", tmp_path / f"v3-{x}-s0", 1800)
                                                          for x in "bcd"])
    # b resumed in place from its 1,200-step checkpoint (--resume --steps 1800)
    (tmp_path / "v3-b-s0/config.json").write_text(json.dumps({"steps": 1800}))
    RunDir(tmp_path / "v3-b-s0").reopen()
    RunDir(tmp_path / "v3-b-s0").save_checkpoint(1250, {"prompt": torch.zeros(2)}, {"lr": 0.001})
    # c trained again from step 0 (its checkpoint lost with a machine): config.json says 1,800, no checkpoint yet
    (tmp_path / "v3-c-s0/config.json").write_text(json.dumps({"steps": 1800}))
    RunDir(tmp_path / "v3-c-s0").reopen()
    budget, todo = to_continue(tmp_path, names, FIRST)
    assert budget == 1800 and [dest.name for _, dest, _ in todo] == ["v3-b-s0", "v3-c-s0", "v3-d-s0"]
    assert all(source == dest and steps == 1800 for source, dest, steps in todo)   # each goes on in place
    # d's first seconds: extend.sh dropped its eval.json, eptk is loading the model (config.json still says 1,200)
    RunDir(tmp_path / "v3-d-s0").save_checkpoint(1200, {"prompt": torch.zeros(2)}, {"lr": 0.001})
    RunDir(tmp_path / "v3-d-s0").reopen()
    assert to_continue(tmp_path, names, FIRST) == (1800, todo)
    # a continuation of the 1,200-step round trained again from 0 is its version-2 run until it reaches 1,200
    finished(tmp_path / "v2-e-s0", 600)
    (tmp_path / "v3-e-s0").mkdir()
    (tmp_path / "v3-e-s0/config.json").write_text(json.dumps({"steps": 1200}))
    RunDir(tmp_path / "v3-e-s0").save_checkpoint(900, {"prompt": torch.zeros(2)}, {"lr": 0.001})
    assert to_continue(tmp_path, names + ["v2-e-s0"], FIRST) == (1200, [(tmp_path / "v2-e-s0",
                                                                         tmp_path / "v3-e-s0", 1200)])


def test_a_run_is_read_from_its_finished_continuation(tmp_path):
    finished(tmp_path / "v2-a-s0", 600)
    assert continued_name("v2-a-s0") == "v3-a-s0" and current_path(tmp_path, "v2-a-s0") == tmp_path / "v2-a-s0"
    (tmp_path / "v3-a-s0").mkdir()                                # unfinished: the version-2 run still stands
    assert current_path(tmp_path, "v2-a-s0") == tmp_path / "v2-a-s0"
    finished(tmp_path / "v3-a-s0", 1200, 700)
    assert current_path(tmp_path, "v2-a-s0") == tmp_path / "v3-a-s0"


def test_claim_2_reads_a_run_s_budget_and_stop_from_what_gather_keeps():
    from types import SimpleNamespace
    run = SimpleNamespace(extra={"budget": 1200, "early_stop": {"stopped": True, "step": 725, "best_step": 625}})
    assert standing_of(run) == at(1200, 725)
    assert standing_of(SimpleNamespace(extra={"budget": 600, "early_stop": None})) == at(600)


def test_the_listing_refuses_a_wrong_model_or_folder_in_one_line(tmp_path):
    """extend.sh stops when the listing is empty: a typo must not read as a finished round."""
    import subprocess
    import sys

    def listing(*args):
        return subprocess.run([sys.executable, "-m", "eptk.reproduce.continuations", *map(str, args)],
                              capture_output=True, text=True)
    for args, word in (((), "usage"), (("nosuchmodel", tmp_path), "nosuchmodel"), (("tiny", tmp_path / "nowhere"),
                                                                                  "does not exist")):
        done = listing(*args)
        assert done.returncode == 2 and word in done.stderr and len(done.stderr.strip().splitlines()) == 1, done
        assert done.stdout == ""
    done = listing("tiny", tmp_path)
    assert done.returncode == 0 and done.stdout == "" and "0 run(s) to continue" in done.stderr
