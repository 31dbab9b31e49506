"""A run's config.json holds no folder of the machine it ran on: paths inside the folder that holds the run
(a study's runs, a posterior: prior, a task file) are relative to that folder, statistics are named relative to
eptk's cache. Moved elsewhere (another machine), `eptk tune --config` reruns it to the same posterior."""
import json
import shutil

import torch
from safetensors.torch import load_file

TINY = ["--model", "tiny", "--method", "soft", "--tokens", "4", "--steps", "3", "--batch-size", "4", "--warmup", "1",
        "--eval-size", "4", "--test-size", "4", "--train-size", "16", "--checkpoint-every", "0", "--quiet"]


def write_task(path):
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(80)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_study_moved_to_another_folder_reruns_from_its_configs(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    study = tmp_path / "here" / "study"
    study.mkdir(parents=True)
    write_task(study / "task.jsonl")
    task = f"jsonl:{study / 'task.jsonl'}"
    code, _, err = run_cli("tune", *TINY, "--task", task, "--out", study / "source")
    assert code == 0, err
    code, _, err = run_cli("tune", *TINY, "--task", task, "--prior", f"posterior:{study / 'source'}",
                           "--prior-weight", "1", "--out", study / "transfer")
    assert code == 0, err
    code, _, err = run_cli("tune", *TINY, "--prior", "region:data", "--out", study / "region")
    assert code == 0, err
    for run in ("source", "transfer", "region"):
        text = (study / run / "config.json").read_text()
        assert str(tmp_path) not in text, f"{run}/config.json names a folder of this machine"
    config = json.loads((study / "transfer" / "config.json").read_text())
    assert (config["out"], config["task"], config["prior"]) == ("transfer", "jsonl:task.jsonl", "posterior:source")
    assert json.loads((study / "region" / "config.json").read_text())["stats"]["arith"].startswith("stats/")

    moved = tmp_path / "elsewhere" / "study"
    shutil.move(str(study), str(moved))           # the folder the configs were written in is gone
    for run in ("transfer", "region"):
        code, _, err = run_cli("tune", "--config", moved / run / "config.json", "--out", tmp_path / f"again-{run}",
                               "--quiet")
        assert code == 0, err
        want = load_file(str(moved / run / "posterior.safetensors"))
        got = load_file(str(tmp_path / f"again-{run}" / "posterior.safetensors"))
        assert all(torch.equal(want[k], got[k]) for k in want), run


def test_config_without_out_reruns_into_its_own_folder(tmp_path, run_cli, monkeypatch):
    """`out` is recorded relative to the run's folder: --config without --out names that run, which is refused
    as already there (nothing written), not a folder of the machine that made it."""
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli("tune", *TINY, "--out", tmp_path / "a" / "run")
    assert code == 0, err
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    before = sorted(p.name for p in (tmp_path / "b" / "run").iterdir())
    code, _, err = run_cli("tune", "--config", tmp_path / "b" / "run" / "config.json", "--quiet")
    assert code == 2 and "already holds a run" in err and str(tmp_path / "b" / "run") in err, err
    assert sorted(p.name for p in (tmp_path / "b" / "run").iterdir()) == before


def test_model_name_stays_a_name_beside_a_folder_of_that_name(tmp_path, run_cli, monkeypatch):
    """The study lived in ./smollm2 with `--model smollm2`: config.json recorded the model as "." (the folder)
    and resuming the interrupted run was refused as "other settings". A model name is kept as a name."""
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()                    # the study folder, named like the model
    code, _, err = run_cli("tune", *TINY, "--out", "tiny/run")
    assert code == 0, err
    assert json.loads((tmp_path / "tiny" / "run" / "config.json").read_text())["model"] == "tiny"
    code, _, err = run_cli("tune", *TINY, "--out", "tiny/run")
    assert code == 2 and "already holds a run" in err and "other settings" not in err, err
