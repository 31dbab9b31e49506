"""python -m eptk.reproduce.rerun_check: a committed run against its rerun from config.json (issue 19: a run reruns
on another machine to its score within the noise the study reports, its arm's seeds)."""
import json

import pytest

from eptk.reproduce import rerun_check
from eptk.runs import RunDir


def make(path, score, curve, cpu="CPU A, AVX512"):
    path.mkdir(parents=True)
    run = RunDir(path)
    run.write_config({"name": path.name, "versions": {"eptk": "0.1.0", "eptk_commit": "abc", "torch": "2.13.0", "cpu": cpu}})
    for step, loss in curve:
        run.log({"step": step, "val_loss": loss})
    run.write_eval({"tuned": {"score": score}})
    return path


CURVE = [(0, 7.0), (25, 1.5), (50, 0.5)]


def test_a_rerun_within_its_arm_and_where_it_departs(tmp_path, capsys):
    study = tmp_path / "runs"
    run = make(study / "v2-arith-deep-region-new-s1", 88.0, CURVE)
    make(study / "v2-arith-deep-region-new-s0", 86.0, CURVE)
    make(study / "v2-arith-deep-region-new-s12", 91.0, CURVE)
    make(study / "v2-arith-deep-region-data-s3", 99.0, CURVE)          # another arm
    (study / "v2-arith-deep-region-new-s2").mkdir()                    # unfinished: no score
    rerun = make(tmp_path / "again", 90.5, [(0, 7.0), (25, 1.5000001), (50, 0.4)], cpu="CPU B, AVX2")
    got = rerun_check.check(run, rerun)
    # the arm's 3 seeds 86, 88, 91: mean 88.33, s 2.517, t(0.975, 2) 4.303, so 88.33 ± 12.50, clipped at 100
    low = 88.0 + 1 / 3 - 4.302652729911275 * (19 / 3) ** 0.5 * (4 / 3) ** 0.5
    assert got.pop("prediction_interval") == [pytest.approx(low), 100.0]
    assert got == {"run": run.name, "score": 88.0, "rerun_score": 90.5, "departs_at": 25, "arm_runs": 3,
                   "arm_range": [86.0, 91.0], "within_range": True, "within_arm": True,
                   "made_by": {"eptk": "0.1.0", "eptk_commit": "abc", "torch": "2.13.0", "cpu": "CPU A, AVX512"},
                   "rerun_by": {"eptk": "0.1.0", "eptk_commit": "abc", "torch": "2.13.0", "cpu": "CPU B, AVX2"}}
    for score, in_range, in_interval in ((91.5, False, True), (85.5, False, True), (86.0, True, True),
                                         (91.0, True, True), (low - 0.01, False, False), (low + 0.01, False, True),
                                         (100.0, False, True)):
        RunDir(rerun).write_eval({"tuned": {"score": score}})
        got = rerun_check.check(run, rerun)
        assert (got["within_range"], got["within_arm"]) == (in_range, in_interval), score
    RunDir(rerun).write_eval({"tuned": {"score": 85.5}})

    record = tmp_path / "reruns.jsonl"
    assert rerun_check.main([str(run), str(rerun), "--record", str(record)]) == 0
    line = capsys.readouterr().out.strip()
    assert record.read_text() == line + "\n" and str(tmp_path) not in line
    assert json.loads(line)["rerun_score"] == 85.5


def test_an_unfinished_run_or_rerun_is_refused_in_one_line(tmp_path, capsys):
    run = make(tmp_path / "runs" / "v2-a-s0", 50.0, CURVE)
    (tmp_path / "again").mkdir()
    assert rerun_check.main([str(run), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a finished run" in err and "again" in err
    assert rerun_check.main([str(run)]) == 2 and "usage:" in capsys.readouterr().err
    assert rerun_check.main([str(run), str(run), "--record"]) == 2


def test_the_report_s_reruns_section_reads_each_run_s_latest_check(tmp_path):
    from eptk.reproduce.report import _reruns

    assert _reruns(tmp_path) == []                                      # no reruns.jsonl: no section
    first = {"run": "v2-a-s1", "score": 91.1, "rerun_score": 95.0, "departs_at": 25, "arm_runs": 10,
             "arm_range": [82.2, 93.6], "prediction_interval": [84.0, 95.0], "within_arm": False, "made_by": {"cpu": None}, "rerun_by": {"cpu": "CPU D"}}
    latest = dict(first, rerun_score=92.3, within_arm=True)
    repeated = dict(first, run="v2-b-s0", departs_at=None, within_arm=True, made_by={"cpu": "CPU D"})
    (tmp_path / "reruns.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (first, repeated, latest)))
    lines = _reruns(tmp_path)
    assert lines[0] == "## Reruns"
    assert "2 of 2 scored within the 95% prediction interval of their arm" in lines[2]
    assert "; 1 of 2 repeated every validation loss" in lines[2]
    assert lines[6:8] == ["| v2-a-s1 | 91.1 | 92.3 | 25 | 10 | 82.2–93.6 | 84–95 | yes | not recorded | CPU D |",
                          "| v2-b-s0 | 91.1 | 95 |  | 10 | 82.2–93.6 | 84–95 | yes | CPU D | CPU D |"]
