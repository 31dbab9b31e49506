"""Bad input through the CLI: one line on stderr, exit code 2, no traceback, nothing written or overwritten."""
import json
from pathlib import Path

import pytest
import torch

BASE = ["tune", "--model", "tiny", "--steps", "2", "--batch-size", "2", "--test-size", "2", "--eval-size", "2",
        "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished tiny run plus broken files to point the CLI at."""
    from eptk.cli.main import main
    from eptk.io import save_tensors_atomic, write_json_atomic

    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    assert main([*BASE, "--method", "soft", "--out", str(run)]) == 0
    (root / "missing.jsonl").write_text('{"prompt": "1+1="}\n')
    (root / "badjson.jsonl").write_text('{"prompt": "1+1=", "answer": "2"\n')
    (root / "empty.jsonl").write_text("\n\n")
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
    (root / "notarun").mkdir()
    (root / "notarun" / "x.txt").write_text("keep me")
    whole = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
             "lm_head": "cpu"}
    maps = {"badmodule": dict(whole, **{"model.decoder": "cpu"}), "partial": {"model.layers": "cpu"},
            "baddevice": dict(whole, lm_head="tpu"), "absentgpu": dict(whole, lm_head=99),
            "disk": dict(whole, **{"model.layers": "disk"}), "notamap": ["cpu"]}
    for name, content in maps.items():
        (root / f"{name}.json").write_text(json.dumps(content))
    return root


CASES = {
    "unknown model": ["--model", "no-such-model"],
    "missing gguf": ["--model", "/nope/model.gguf"],
    "unknown task": ["--task", "poetry"],
    "bad task args": ["--task", "arith:+:99"],
    "unknown method": ["--method", "lora"],
    "unknown prior": ["--prior", "gaussian"],
    "malformed prior args": ["--prior", "normal:-3"],
    "prior takes no args": ["--prior", "xavier:2"],
    "empty text prior": ["--prior", "text:"],
    "layer out of range": ["--method", "deep", "--layers", "9"],
    "layer zero": ["--method", "deep", "--layers", "0"],
    "bad layer spec": ["--method", "deep", "--layers", "last:x"],
    "zero tokens": ["--tokens", "0"],
    "negative steps": ["--steps", "-5"],
    "negative lr": ["--lr", "-0.1"],
    "zero batch": ["--batch-size", "0"],
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
    "unknown device": ["--device", "tpu"],
    "absent GPU": ["--device", "cuda:99"],
    "bad lr scale": ["--lr-scale", "layerwise"],
    "non-integer tokens": ["--tokens", "many"],
    "unknown option": ["--frobnicate"],
    "jsonl missing fields": ["--task", "jsonl:{root}/missing.jsonl"],
    "jsonl bad json": ["--task", "jsonl:{root}/badjson.jsonl"],
    "jsonl no rows": ["--task", "jsonl:{root}/empty.jsonl"],
    "jsonl missing file": ["--task", "jsonl:{root}/nothere.jsonl"],
    "truncated safetensors": ["--prior", "posterior:{root}/truncated"],
    "foreign safetensors": ["--prior", "posterior:{root}/foreign"],
    "posterior of another model": ["--prior", "posterior:{root}/othermodel"],
    "posterior of another width": ["--prior", "posterior:{root}/wide"],
    "posterior not a run": ["--prior", "posterior:{root}/notarun"],
    "out is another run": ["--out", "{root}/run"],
    "out is a non-run folder": ["--out", "{root}/notarun"],
    "resume not a run": ["--resume", "{root}/notarun"],
}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tune_input(files, run_cli, case):
    args = [a.format(root=files) for a in CASES[case]]
    out = [] if any(a.startswith("--out") or a == "--resume" for a in args) else ["--out", str(files / "new")]
    before = snapshot(files)
    code, stdout, stderr = run_cli(*BASE, *args, *out)
    assert code == 2, (case, stdout, stderr)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr + stdout
    assert snapshot(files) == before, "nothing written or overwritten"
    assert not (files / "new").exists()


@pytest.mark.parametrize("args", [["eval", "{root}/notarun"], ["generate", "{root}/notarun", "hi"],
                                  ["eval", "{root}/truncated"], ["nosuchcommand"],
                                  ["eval", "{root}/run", "--device", "cuda:99"],
                                  ["generate", "{root}/run", "hi", "--device-map", "{root}/partial.json"],
                                  ["capture", "--model", "tiny", "--device-map", "{root}/disk.json"]])
def test_bad_other_commands(files, run_cli, args):
    code, stdout, stderr = run_cli(*[a.format(root=files) for a in args])
    assert code == 2, stderr
    assert len([l for l in stderr.splitlines() if l.strip()]) == 1 and "Traceback" not in stderr


def test_hub_id_offline(run_cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, stderr = run_cli(*BASE, "--model", "someone/some-model")
    assert code == 2 and "HF_HUB_OFFLINE" in stderr
