"""`eptk tune --config RUN/config.json` says, before it trains, whether it starts from RUN's prior exactly: a rerun
on another machine did not (float rounding of captured statistics), and its score then differed by about the
seeds' spread (docs/findings/HOW.md). The note is the user's warning that such a rerun will not repeat RUN."""
import json

from safetensors.torch import load_file, save_file

from test_portable_runs import TINY


def rerun(run_cli, run, out, *options):
    code, _, err = run_cli("tune", "--config", run / "config.json", "--out", out, *options)
    assert code == 0, err
    return [line for line in err.splitlines() if line.startswith("rerun of ")]


def test_a_rerun_says_whether_it_starts_from_the_run_s_prior(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code, _, err = run_cli("tune", *TINY, "--prior", "region:data", "--out", run)
    assert code == 0, err
    assert rerun(run_cli, run, tmp_path / "same", "--quiet") == [f"rerun of {run}: it starts from the run's prior exactly"]

    # as if made on another machine: one entry of its prior off in the last digits, another CPU recorded
    prior = load_file(str(run / "prior.safetensors"))
    largest = max(float(t.abs().max()) for t in prior.values())
    name = sorted(prior)[0]
    prior[name] = prior[name].clone()
    prior[name].view(-1)[3] += 1e-3
    save_file(prior, str(run / "prior.safetensors"))
    config = json.loads((run / "config.json").read_text())
    config["versions"]["cpu"] = "Another CPU, AVX2"
    (run / "config.json").write_text(json.dumps(config))
    [note] = rerun(run_cli, run, tmp_path / "other", "--quiet", "--steps", "2")    # --steps keeps the start
    gap = abs(float(prior[name].view(-1)[3]) - float(load_file(str(tmp_path / "other" / "prior.safetensors"))[name].view(-1)[3]))
    assert f"differs from the run's by up to {gap:.3g} ({gap / largest:.2g} of its largest entry" in note, note
    assert "its CPU Another CPU, AVX2, now " in note and "seed-to-seed spread" in note, note

    # the same CPU recorded: nothing it names differs; a run that recorded no CPU cannot say
    rerun_versions = json.loads((tmp_path / "other" / "config.json").read_text())["versions"]
    config["versions"]["cpu"] = rerun_versions["cpu"]
    config["versions"]["eptk_commit"] = rerun_versions.get("eptk_commit") or "0123456789"   # none from a wheel
    (run / "config.json").write_text(json.dumps(config))
    [note] = rerun(run_cli, run, tmp_path / "same-cpu", "--quiet")
    assert "the same eptk commit, torch and CPU: other float rounding" in note, note
    del config["versions"]["cpu"]
    (run / "config.json").write_text(json.dumps(config))
    [note] = rerun(run_cli, run, tmp_path / "unrecorded", "--quiet")
    assert "the run records no eptk commit or CPU to compare" in note, note

    # another seed or prior starts elsewhere by design: nothing to compare
    assert rerun(run_cli, run, tmp_path / "seed", "--quiet", "--seed", "5") == []
    (run / "prior.safetensors").unlink()
    assert rerun(run_cli, run, tmp_path / "gone", "--quiet") == []


def test_a_prior_the_rerun_cannot_read_is_said_and_the_rerun_goes_on(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert run_cli("tune", *TINY, "--out", run)[0] == 0
    (run / "prior.safetensors").write_bytes(b"not safetensors")
    [note] = rerun(run_cli, run, tmp_path / "again", "--quiet")
    assert note.startswith(f"rerun of {run}: nothing to compare its start with (") and "not a readable" in note
    assert (tmp_path / "again" / "eval.json").is_file()                 # trained and scored all the same
