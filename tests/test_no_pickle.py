"""eptk never unpickles: no pickle-based call in the package's source, model weights from safetensors only
(a folder with pickle weights alone is refused unless --allow-pickle-weights), and the settings ranks
exchange travel as tensors."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SOURCES = sorted(p for folder in ("eptk", "cli", "kernels") for p in (ROOT / folder).rglob("*.py"))

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# torch.distributed's object collectives pickle what they send
OBJECT_COLLECTIVES = {"broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                      "send_object_list", "recv_object_list"}


def offences(path: Path) -> list[str]:
    found = []
    shown = path.relative_to(ROOT) if ROOT in path.parents else path
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            owner = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
            keywords = {k.arg: k.value for k in node.keywords}
            if name in OBJECT_COLLECTIVES:
                found.append(f"{where}: {name} (pickles)")
            elif name == "load" and owner == "torch":
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{where}: torch.load without weights_only=True")
            elif name == "save" and owner in ("torch", "np", "numpy"):
                found.append(f"{where}: {owner}.save (pickle format)")
            elif name == "load" and owner in ("np", "numpy"):
                allow = keywords.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value is True:
                    found.append(f"{where}: numpy.load(allow_pickle=True)")
            elif name == "from_pretrained" and "Model" in owner and "use_safetensors" not in keywords \
                    and "gguf_file" not in keywords:
                found.append(f"{where}: {owner}.from_pretrained without use_safetensors")
    return found


def test_no_pickle_in_the_package():
    found = [o for path in SOURCES for o in offences(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("planted", ["import pickle", "dist.broadcast_object_list(box, src=0)",
                                     "torch.load(path)", "AutoModelForCausalLM.from_pretrained(name)",
                                     "np.load(f, allow_pickle=True)"])
def test_the_scan_sees_a_planted_call(tmp_path, planted):
    """The scan itself: each pickle-using form it guards against is found."""
    path = tmp_path / "planted.py"
    path.write_text(planted + "\n")
    assert offences(path)


def test_pickle_only_model_folders_are_refused(tmp_path):
    """A folder whose weights are only pytorch_model.bin is refused before anything loads, naming the flag;
    with --allow-pickle-weights the name check passes (the loader may then unpickle)."""
    from eptk.errors import EptkUsageError
    from eptk.models import check_model_name

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(EptkUsageError, match="--allow-pickle-weights"):
        check_model_name(str(tmp_path))
    assert check_model_name(str(tmp_path), allow_pickle_weights=True) == "dir"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert check_model_name(str(tmp_path)) == "dir"


def test_hub_loading_insists_on_safetensors(monkeypatch):
    """from_pretrained is asked for safetensors (use_safetensors=True) unless pickle weights are allowed, and
    transformers' "no safetensors" error becomes the refusal that names the flag."""
    import transformers

    from eptk.errors import EptkUsageError
    from eptk.models import _from_pretrained

    calls = []

    class FakeModel:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append(kwargs.get("use_safetensors"))
            if kwargs.get("use_safetensors"):
                raise OSError(f"{name} does not appear to have a file named model.safetensors")
            return "model"

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", FakeModel)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(lambda *a, **k: "tok"))
    with pytest.raises(EptkUsageError, match="--allow-pickle-weights"):
        _from_pretrained("someone/model", None, False)
    assert _from_pretrained("someone/model", None, False, allow_pickle_weights=True) == ("model", "tok")
    assert calls == [True, None]


def test_error_messages_cross_ranks_as_tensors():
    """Distributed.broadcast_error sends bytes in a uint8 tensor (here over a one-process gloo group)."""
    import os

    import torch.distributed as dist

    from eptk.distributed import Distributed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        d = Distributed(rank=0, world=2)  # world 2: take the collective path (one rank is enough to send)
        d.world = 2
        assert d.broadcast_error("bad --lr: ünïcode") == "bad --lr: ünïcode"
        assert d.broadcast_error(None) is None
    finally:
        dist.destroy_process_group()


def _pickle_only_copy(folder):
    """The tiny Llama saved as a folder whose weights are only pytorch_model.bin (transformers 5 writes
    safetensors whatever it is asked, so the .bin is written with torch.save)."""
    import torch

    from eptk.models import build_tiny

    model, tokenizer = build_tiny("llama", seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


def test_pickle_weights_load_only_when_allowed(tmp_path):
    """End to end: a pickle-only folder is refused by load_model and by `eptk tune` (exit 2, no run written);
    with --allow-pickle-weights it loads the same weights and the run records the flag."""
    import json

    import torch

    from eptk.cli.main import main
    from eptk.errors import EptkUsageError
    from eptk.models import load_model

    folder = tmp_path / "model"
    original = _pickle_only_copy(folder)
    with pytest.raises(EptkUsageError, match="--allow-pickle-weights"):
        load_model(str(folder))
    loaded = load_model(str(folder), allow_pickle_weights=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, loaded.model(ids).logits)

    args = ["tune", "--model", str(folder), "--steps", "1", "--batch-size", "2", "--eval-size", "2",
            "--test-size", "2", "--train-size", "8", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--allow-pickle-weights", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["allow_pickle_weights"] is True


class _Marker:
    """A pickle that touches a file when unpickled: code run by loading."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_a_code_running_pickle_is_never_run(tmp_path):
    """A pytorch_model.bin whose unpickling runs code: refused without the flag, and nothing ran."""
    import pickle

    from eptk.errors import EptkUsageError
    from eptk.models import load_model

    folder = tmp_path / "model"
    _pickle_only_copy(folder)
    marker = tmp_path / "ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Marker(marker)}))
    with pytest.raises(EptkUsageError, match="--allow-pickle-weights"):
        load_model(str(folder))
    assert not marker.exists()
