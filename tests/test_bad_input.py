"""Bad input through the CLI, for every command: one line on stderr, exit code 2, no traceback, the disk
byte for byte as before (every path's mode and every file's bytes, the statistics cache included), and
no model loaded when a check that needs none could fail first. Every numeric option is tried at 0
(where 0 is not valid), -1, NaN and a huge value; every path option at a file, a missing parent and a
folder without write permission."""
import fcntl
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from disk import snapshot, unprivileged

BASE = ["tune", "--model", "tiny", "--steps", "2", "--batch-size", "2", "--test-size", "2", "--eval-size", "2",
        "--train-size", "16", "--quiet"]
HUGE_INT, HUGE_FLOAT = "1" + "0" * 30, "1e30"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished tiny run, an adapter, a sweep file and broken files to point the CLI at."""
    from eptk.cli.main import main
    from eptk.io import save_tensors_atomic, write_json_atomic

    root = tmp_path_factory.mktemp("bad")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EPTK_CACHE", str(root / "cache"))
        run = root / "run"
        assert main([*BASE, "--method", "soft", "--out", str(run)]) == 0
        assert main(["export", str(run), "--out", str(root / "adapter")]) == 0
    (root / "cache").mkdir(exist_ok=True)
    (root / "a_file").write_text("not json, not a folder\n")
    (root / "missing.jsonl").write_text('{"prompt": "1+1="}\n')
    (root / "badjson.jsonl").write_text('{"prompt": "1+1=", "answer": "2"\n')
    (root / "empty.jsonl").write_text("\n\n")
    rows = [json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1), "split": "train"}) for i in range(20)]
    (root / "trainonly.jsonl").write_text("\n".join(rows) + "\n")
    for name, payload in {"truncated": (run / "posterior.safetensors").read_bytes()[:40],
                          "foreign": b"PK\x03\x04 definitely not safetensors" * 10}.items():
        d = root / name
        d.mkdir()
        (d / "config.json").write_text((run / "config.json").read_text())
        (d / "posterior.safetensors").write_bytes(payload)
    other = root / "othermodel"
    other.mkdir()
    write_json_atomic(other / "config.json", dict(json.loads((run / "config.json").read_text()), model="smollm2"))
    save_tensors_atomic(other / "posterior.safetensors", {"soft": torch.zeros(20, 64)})
    wide = root / "wide"
    wide.mkdir()
    (wide / "config.json").write_text((run / "config.json").read_text())
    save_tensors_atomic(wide / "posterior.safetensors", {"soft": torch.zeros(20, 576)})
    imported = root / "imported"
    imported.mkdir()
    write_json_atomic(imported / "config.json", dict(json.loads((run / "config.json").read_text()), prior="imported"))
    pickled = root / "pickled-model"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "llama"}\n')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (root / "notarun").mkdir()
    (root / "notarun" / "x.txt").write_text("keep me")
    (root / "locked").mkdir()
    (root / "locked" / "config.json").write_text((run / "config.json").read_text())
    (root / "locked" / ".lock").write_text("123")
    (root / "grid.toml").write_text('seeds = [0]\n[fixed]\nmodel = "tiny"\nsteps = 2\nbatch_size = 2\n')
    whole = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
             "lm_head": "cpu"}
    maps = {"badmodule": dict(whole, **{"model.decoder": "cpu"}), "partial": {"model.layers": "cpu"},
            "baddevice": dict(whole, lm_head="tpu"), "absentgpu": dict(whole, lm_head=99),
            "disk": dict(whole, **{"model.layers": "disk"}), "notamap": ["cpu"]}
    for name, content in maps.items():
        (root / f"{name}.json").write_text(json.dumps(content))
    return root


# a device map's module names are checked against the model's modules: the model loads first (and still
# nothing is written)
NEEDS_MODEL = {"layer out of range", "posterior of another width", "capture layer out of range",
               "device map misses modules", "device map names no module", "generate device map misses modules"}


# Each model a case loaded before a check that needs none. Recorded, not only raised: a caller may catch the
# refusal (analysis/read.py turns any failure to load a vocabulary into a note) and go on to exit 2 anyway.
EARLY_LOADS: list[str] = []


@pytest.fixture(autouse=True)
def guarded(request, files, monkeypatch):
    """The statistics cache inside the snapshot; loading a model is an error unless the case needs one."""
    monkeypatch.setenv("EPTK_CACHE", str(files / "cache"))
    case = request.node.callspec.params.get("case") if hasattr(request.node, "callspec") else None
    EARLY_LOADS.clear()
    if case not in NEEDS_MODEL:
        def refuse(name="", *args, **kwargs):
            EARLY_LOADS.append(str(name))
            raise AssertionError("a model was loaded before a check that needs none")
        modules = ("eptk.models",)  # every command loads through eptk.models.load_model
        for module in modules:  # all imported first: one imported while models.load_model is patched
            importlib.import_module(module)  # would keep the patch after the test
        for module in modules:
            monkeypatch.setattr(f"{module}.load_model", refuse)
    yield
    assert not EARLY_LOADS, f"models loaded before a check that needs none: {EARLY_LOADS}"


def expect_refusal(run_cli, files, args):
    """exit 2, one line naming the problem, no traceback, nothing on disk changed."""
    before = snapshot(files)
    code, stdout, stderr = run_cli(*args)
    early, EARLY_LOADS[:] = list(EARLY_LOADS), []  # reported here, not again when the fixture ends
    assert not early, f"models loaded before a check that needs none: {early}"
    assert code == 2, (args, stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr + stdout
    assert snapshot(files) == before, "nothing written, changed or removed"
    return lines[0]


# case -> the option its one-line error must name (a refusal for another reason further on is not one)
NAMED = {"train size zero": "--train-size", "train size negative": "--train-size",
         "eval size negative": "--eval-size"}


def refuses_the_option(case: str, line: str) -> None:
    """A NAMED case is refused for its option's value: eptk's range message or the CLI parser's, not a
    later error that merely mentions the option."""
    if case in NAMED:
        option = NAMED[case]
        assert f"{option} must be" in line or f"Invalid value for '{option}'" in line, (case, line)


def numbers(options: dict, command: str = "") -> dict:
    """option -> (zero is valid, integer) as bad cases: 0 where it is not valid, -1, NaN, huge."""
    cases = {}
    for option, (zero_ok, integer) in options.items():
        values = ["-1", "nan", HUGE_INT if integer else HUGE_FLOAT] + ([] if zero_ok else ["0"])
        for value in values:
            name = f"{command} {option} {value}".strip()
            cases[name] = [option, value]
            NAMED[name] = option
    return cases


TUNE_NUMBERS = {"--tokens": (False, True), "--steps": (False, True), "--batch-size": (False, True),
                "--grad-accum": (False, True), "--lr": (False, False), "--weight-decay": (True, False),
                "--prior-weight": (True, False), "--warmup": (True, True), "--clip": (True, False),
                "--eval-every": (True, True), "--eval-size": (True, True), "--test-size": (True, True),
                "--train-size": (False, True), "--checkpoint-every": (True, True), "--seed": (True, True),
                "--stats-samples": (False, True)}

TUNE_CASES = {
    # the reports
    "train size zero": ["--train-size", "0"],
    "train size negative": ["--train-size", "-1"],
    "eval size negative": ["--eval-size", "-3"],
    "region prior into an existing run": ["--method", "deep", "--prior", "region:new", "--out", "{root}/run"],
    # names and specs
    "unknown model": ["--model", "no-such-model"],
    "unknown tiny family": ["--model", "tiny:bert"],
    "missing gguf": ["--model", "/nope/model.gguf"],
    "pickle-only model folder": ["--model", "{root}/pickled-model"],
    "unknown device": ["--device", "tpu"],
    "unknown task": ["--task", "poetry"],
    "bad task args": ["--task", "arith:+:99"],
    "unknown method": ["--method", "lora"],
    "unknown prior": ["--prior", "gaussian"],
    "malformed prior args": ["--prior", "normal:-3"],
    "prior takes no args": ["--prior", "xavier:2"],
    "empty text prior": ["--prior", "text:"],
    "region prior of an unknown task": ["--method", "deep", "--prior", "region:data:poetry"],
    "between an unknown task": ["--method", "deep", "--prior", "region:between:arith,poetry"],
    "layer out of range": ["--method", "deep", "--layers", "9"],
    "layer zero": ["--method", "deep", "--layers", "0"],
    "bad layer spec": ["--method", "deep", "--layers", "last:x"],
    "no last layers": ["--method", "deep", "--layers", "last:0"],
    "bad schedule": ["--schedule", "sawtooth"],
    "bad backend": ["--backend", "cuda-graphs"],
    "bad nan policy": ["--nan-policy", "ignore"],
    "bad device map": ["--device-map", "balanced-ish"],
    "device map file missing": ["--device-map", "{root}/nothere.json"],
    "device map names no module": ["--device-map", "{root}/badmodule.json"],
    "device map misses modules": ["--device-map", "{root}/partial.json"],
    "device map bad device": ["--device-map", "{root}/baddevice.json"],
    "device map absent GPU": ["--device-map", "{root}/absentgpu.json"],
    "device map not an object": ["--device-map", "{root}/notamap.json"],
    "disk without offload dir": ["--device-map", "{root}/disk.json"],
    "offload dir without map": ["--offload-dir", "{root}/offload"],
    "absent GPU": ["--device", "cuda:99"],
    "bad lr scale": ["--lr-scale", "layerwise"],
    "non-integer tokens": ["--tokens", "many"],
    "unknown option": ["--frobnicate"],
    # tasks given as files
    "jsonl missing fields": ["--task", "jsonl:{root}/missing.jsonl"],
    "jsonl bad json": ["--task", "jsonl:{root}/badjson.jsonl"],
    "jsonl no rows": ["--task", "jsonl:{root}/empty.jsonl"],
    "jsonl missing file": ["--task", "jsonl:{root}/nothere.jsonl"],
    "jsonl without a test split": ["--task", "jsonl:{root}/trainonly.jsonl", "--eval-size", "0"],
    "jsonl without a validation split": ["--task", "jsonl:{root}/trainonly.jsonl", "--test-size", "0"],
    # priors given as runs
    "truncated safetensors": ["--prior", "posterior:{root}/truncated"],
    "foreign safetensors": ["--prior", "posterior:{root}/foreign"],
    "posterior of another model": ["--prior", "posterior:{root}/othermodel"],
    "posterior of another width": ["--prior", "posterior:{root}/wide"],
    "posterior not a run": ["--prior", "posterior:{root}/notarun"],
    "posterior missing parent": ["--prior", "posterior:{root}/no/such/run"],
    # --out, --resume, --config
    "out is another run": ["--out", "{root}/run"],
    "out is a file": ["--out", "{root}/a_file"],
    "out below a file": ["--out", "{root}/a_file/run"],
    "out is locked": ["--out", "{root}/locked", "--overwrite"],
    "resume not a run": ["--resume", "{root}/notarun"],
    "resume a file": ["--resume", "{root}/a_file"],
    "resume missing": ["--resume", "{root}/nothere"],
    "resume missing parent": ["--resume", "{root}/no/such/run"],
    "resume an imported run": ["--resume", "{root}/imported"],
    "resume with another setting": ["--resume", "{root}/run", "--lr", "0.5", "--seed", "3"],
    "resume into another out": ["--resume", "{root}/run", "--out", "{root}/elsewhere"],
    "resume and overwrite": ["--resume", "{root}/run", "--overwrite", "--steps", "4"],
    "resume and config": ["--resume", "{root}/run", "--config", "{root}/run/config.json"],
    "resume below its steps": ["--resume", "{root}/run", "--steps", "1"],
    "config a folder": ["--config", "{root}/run"],
    "config missing": ["--config", "{root}/nothere.json"],
    "config missing parent": ["--config", "{root}/no/such/config.json"],
    "config not json": ["--config", "{root}/a_file"],
    **numbers(TUNE_NUMBERS),
}


@pytest.mark.parametrize("case", sorted(TUNE_CASES))
def test_bad_tune_input(files, run_cli, case):
    args = [a.format(root=files) for a in TUNE_CASES[case]]
    resumed = "--resume" in args or "--config" in args
    base = ["tune", "--quiet"] if resumed else BASE
    out = [] if any(a in ("--out", "--resume") for a in args) else ["--out", str(files / "new")]
    fd = None
    if case == "out is locked":  # another process's lock: flock is per open file, so this one conflicts
        fd = open(files / "locked" / ".lock")
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        refuses_the_option(case, expect_refusal(run_cli, files, [*base, *args, *out]))
    finally:
        if fd is not None:
            fd.close()
    assert not (files / "new").exists()


def test_resume_names_every_difference(files, run_cli):
    line = expect_refusal(run_cli, files, ["tune", "--resume", files / "run", "--lr", "0.5", "--seed", "3",
                                           "--method", "soft"])
    assert "--lr 0.5 (run: 0.01)" in line and "--seed 3 (run: 0)" in line and "--method" not in line


OTHER_CASES = {
    "eval not a run": ["eval", "{root}/notarun"],
    "eval a file": ["eval", "{root}/a_file"],
    "eval missing parent": ["eval", "{root}/no/such/run"],
    "eval truncated posterior": ["eval", "{root}/truncated"],
    "eval unknown task": ["eval", "{root}/run", "--task", "poetry"],
    "eval unknown split": ["eval", "{root}/run", "--split", "dev"],
    "eval bad backend": ["eval", "{root}/run", "--backend", "fast"],
    "generate not a run": ["generate", "{root}/notarun", "hi"],
    "generate a file": ["generate", "{root}/a_file", "hi"],
    "generate empty text": ["generate", "{root}/run", ""],
    "capture unknown model": ["capture", "--model", "nope"],
    "capture unknown task": ["capture", "--model", "tiny", "--task", "poetry"],
    "capture bad layers": ["capture", "--model", "tiny", "--layers", "last:x"],
    "capture layer out of range": ["capture", "--model", "tiny", "--layers", "99", "--out", "{root}/newstats"],
    "capture unknown device": ["capture", "--model", "tiny", "--device", "tpu"],
    "capture out is a file": ["capture", "--model", "tiny", "--out", "{root}/a_file"],
    "capture out below a file": ["capture", "--model", "tiny", "--out", "{root}/a_file/stats"],
    "analyze missing run": ["analyze", "{root}/nothere", "--out", "{root}/analysis"],
    "analyze missing parent": ["analyze", "{root}/no/such/run", "--out", "{root}/analysis"],
    "analyze a file": ["analyze", "{root}/a_file", "--out", "{root}/analysis"],
    "analyze out is a file": ["analyze", "{root}/run", "--out", "{root}/a_file", "--no-vocab"],
    "analyze out below a file": ["analyze", "{root}/run", "--out", "{root}/a_file/analysis", "--no-vocab"],
    "analyze stats a file": ["analyze", "{root}/run", "--stats", "{root}/a_file", "--out", "{root}/analysis"],
    "analyze stats missing": ["analyze", "{root}/run", "--stats", "{root}/no/stats", "--out", "{root}/analysis"],
    "export not a run": ["export", "{root}/notarun", "--out", "{root}/exported"],
    "export a file": ["export", "{root}/a_file", "--out", "{root}/exported"],
    "export missing parent": ["export", "{root}/no/such/run", "--out", "{root}/exported"],
    "export out is a file": ["export", "{root}/run", "--out", "{root}/a_file"],
    "export out below a file": ["export", "{root}/run", "--out", "{root}/a_file/adapter"],
    "export unknown format": ["export", "{root}/run", "--out", "{root}/exported", "--format", "lora"],
    "export unknown device": ["export", "{root}/run", "--out", "{root}/exported", "--device", "tpu"],
    "import a file": ["import-peft", "{root}/a_file", "--out", "{root}/importedrun"],
    "import missing parent": ["import-peft", "{root}/no/such/adapter", "--out", "{root}/importedrun"],
    "import out is a file": ["import-peft", "{root}/adapter", "--out", "{root}/a_file"],
    "import out is a run": ["import-peft", "{root}/adapter", "--out", "{root}/run"],
    "import unknown model": ["import-peft", "{root}/adapter", "--out", "{root}/importedrun", "--model", "nope"],
    "import unknown task": ["import-peft", "{root}/adapter", "--out", "{root}/importedrun", "--task", "poetry"],
    "sweep missing file": ["sweep", "{root}/nothere.toml"],
    "sweep missing parent": ["sweep", "{root}/no/such/grid.toml"],
    "sweep a folder": ["sweep", "{root}/notarun"],
    "sweep out is a file": ["sweep", "{root}/grid.toml", "--out", "{root}/a_file"],
    "sweep out below a file": ["sweep", "{root}/grid.toml", "--out", "{root}/a_file/sweep"],
    "sweep bad shard": ["sweep", "{root}/grid.toml", "--shard", "3/2"],
    "reproduce unknown stage": ["reproduce", "--model", "tiny", "--quick", "--out", "{root}/study", "--stages", "nope"],
    "reproduce bad shard": ["reproduce", "--model", "tiny", "--quick", "--out", "{root}/study", "--shard", "3/2"],
    "reproduce unknown model": ["reproduce", "--model", "nope", "--quick", "--out", "{root}/study"],
    "reproduce out is a file": ["reproduce", "--model", "tiny", "--quick", "--out", "{root}/a_file"],
    "reproduce out below a file": ["reproduce", "--model", "tiny", "--quick", "--out", "{root}/a_file/study"],
    "no such command": ["nosuchcommand"],
    "eval absent GPU": ["eval", "{root}/run", "--device", "cuda:99"],
    "generate device map misses modules": ["generate", "{root}/run", "hi", "--device-map", "{root}/partial.json"],
    "capture disk without offload dir": ["capture", "--model", "tiny", "--device-map", "{root}/disk.json"],
}
# (a command with what it needs, {option: (zero is valid, integer)})
OTHER_NUMBERS = [
    (["eval", "{root}/run"], {"--size": (False, True)}),
    (["generate", "{root}/run", "12+3="], {"--max-new-tokens": (False, True), "--temperature": (False, False),
                                           "--seed": (True, True)}),
    (["capture", "--model", "tiny", "--out", "{root}/newstats"],
     {"--samples": (False, True), "--examples": (False, True), "--batch-size": (False, True), "--seed": (True, True)}),
    (["analyze", "{root}/run", "--out", "{root}/analysis", "--no-vocab"],
     {"--top-k": (False, True), "--knn-k": (False, True), "--permutations": (False, True),
      "--max-data": (False, True), "--seed": (True, True)}),
    (["sweep", "{root}/grid.toml", "--out", "{root}/sweep"], {"--jobs": (False, True)}),
    (["reproduce", "--model", "tiny", "--quick", "--out", "{root}/study"], {"--jobs": (False, True)}),
]
for _command, _options in OTHER_NUMBERS:
    for _name, _args in numbers(_options, _command[0]).items():
        OTHER_CASES[_name] = [*_command, *_args]


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_bad_other_commands(files, run_cli, case):
    refuses_the_option(case, expect_refusal(run_cli, files, [a.format(root=files) for a in OTHER_CASES[case]]))


# every command that writes a folder of its own, pointed at a folder of someone else's files (notarun/x.txt)
FOREIGN_OUT = {
    "tune": [*BASE, "--out", "{root}/notarun"],
    "capture": ["capture", "--model", "tiny", "--out", "{root}/notarun"],
    "export": ["export", "{root}/run", "--out", "{root}/notarun"],
    "import-peft": ["import-peft", "{root}/adapter", "--out", "{root}/notarun"],
    "reproduce": ["reproduce", "--model", "tiny", "--quick", "--out", "{root}/notarun", "--stages", "report"],
}


@pytest.mark.parametrize("command", sorted(FOREIGN_OUT))
def test_out_among_someone_elses_files(files, run_cli, command):
    """Refused for that reason (not a later one), naming the files it would have mixed with."""
    line = expect_refusal(run_cli, files, [a.format(root=files) for a in FOREIGN_OUT[command]])
    assert f"--out {files / 'notarun'} holds files that are not" in line and "(x.txt)" in line, line


def test_hub_id_offline(run_cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, stderr = run_cli(*BASE, "--model", "someone/some-model")
    assert code == 2 and "HF_HUB_OFFLINE" in stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA runs --device cuda")
def test_cuda_without_a_device(files, run_cli):
    assert "CUDA device" in expect_refusal(run_cli, files, [*BASE, "--device", "cuda", "--out", str(files / "new")])


# ---- folders without write permission -------------------------------------------------------------------

WRITE_CASES = {
    "tune --out": ["tune", "--model", "tiny", "--out", "{ro}/run"],
    "tune --resume": ["tune", "--resume", "{ro}/run"],
    "capture --out": ["capture", "--model", "tiny", "--out", "{ro}/stats"],
    "analyze --out": ["analyze", "{root}/run", "--out", "{ro}/analysis", "--no-vocab"],
    "export --out": ["export", "{root}/run", "--out", "{ro}/adapter"],
    "import-peft --out": ["import-peft", "{root}/adapter", "--out", "{ro}/imported"],
    "sweep --out": ["sweep", "{root}/grid.toml", "--out", "{ro}/sweep"],
}


@pytest.fixture(scope="module")
def read_only(tmp_path_factory, files):
    """A folder (holding a copy of the run) that its owner may read but not write."""
    import shutil

    ro = tmp_path_factory.mktemp("readonly")
    shutil.copytree(files / "run", ro / "run")
    for folder in (ro / "run", ro):
        folder.chmod(0o555)
    yield ro
    for folder in (ro, ro / "run"):
        folder.chmod(0o755)


@pytest.mark.parametrize("case", sorted(WRITE_CASES))
def test_folder_without_write_permission(files, read_only, case):
    """Refused before anything is written. As root the command runs without CAP_DAC_OVERRIDE: a real
    permission check, not a chmod that root ignores."""
    prefix = unprivileged()
    if prefix is None:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here (no setpriv)")
    args = [a.format(root=files, ro=read_only) for a in WRITE_CASES[case]]
    before = snapshot(read_only), snapshot(files)
    done = subprocess.run([*prefix, sys.executable, "-m", "eptk.cli", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, EPTK_CACHE=str(files / "cache")))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no permission to write" in lines[0], done.stderr
    assert (snapshot(read_only), snapshot(files)) == before
