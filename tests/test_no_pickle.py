"""eptk never unpickles: no pickle-based call in the package's source, model weights from safetensors only
(a folder with pickle weights alone is refused unless --allow-pickle-weights), and the settings ranks
exchange travel as tensors."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SOURCES = sorted(p for folder in ("eptk", "cli", "kernels") for p in (ROOT / folder).rglob("*.py"))

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}
# torch.distributed's object collectives pickle what they send
OBJECT_COLLECTIVES = {"broadcast_object_list", "all_gather_object", "gather_object", "scatter_object_list",
                      "send_object_list", "recv_object_list"}
# fully qualified callables that unpickle (or pickle) whatever arguments they get
PICKLING = {"pandas.read_pickle": "reads a pickle", "numpy.save": "pickle format for objects",
            "torch.save": "pickle format", "torch.serialization.save": "pickle format",
            "torch.hub.load_state_dict_from_url": "torch.load inside", "torch.jit.load": "may unpickle"}
# ... and those that are safe only with a keyword: name -> (keyword, the value that makes it safe)
UNLESS = {"torch.load": ("weights_only", True), "torch.serialization.load": ("weights_only", True),
          "numpy.load": ("allow_pickle", False), "numpy.lib.format.read_array": ("allow_pickle", False)}
METHODS = {"to_pickle": "pickles", "read_pickle": "unpickles"}  # pandas objects' methods, whatever the object


def imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> the fully qualified name it stands for, from every import in the file (function-level
    ones too): `import numpy as np` gives np -> numpy, `from torch import load as L` gives L -> torch.load."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def qualified(node: ast.AST, names: dict[str, str]) -> str:
    """The dotted name an expression refers to, resolved through the imports (`np.load` -> numpy.load);
    an attribute of something else keeps only its own dotted part."""
    if isinstance(node, ast.Name):
        return names.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return f"{qualified(node.value, names)}.{node.attr}"
    return ""


def _keyword_is(keywords: dict, name: str, value) -> bool:
    given = keywords.get(name)
    return isinstance(given, ast.Constant) and given.value is value


def offences(path: Path) -> list[str]:
    found = []
    shown = path.relative_to(ROOT) if ROOT in path.parents else path
    tree = ast.parse(path.read_text())
    names = imported_names(tree)
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        where = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = qualified(node.func, names)
            last = name.rsplit(".", 1)[-1]
            keywords = {k.arg: k.value for k in node.keywords}
            if last in OBJECT_COLLECTIVES:
                found.append(f"{where}: {name} (pickles)")
            elif name in ("importlib.import_module", "__import__") and node.args and \
                    isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: {name}({node.args[0].value!r})")
            elif name in PICKLING:
                found.append(f"{where}: {name} ({PICKLING[name]})")
            elif name in UNLESS and not _keyword_is(keywords, *UNLESS[name]) and \
                    (name.startswith("torch") or UNLESS[name][0] in keywords):  # numpy.load is safe by default
                found.append(f"{where}: {name} without {UNLESS[name][0]}={UNLESS[name][1]}")
            elif isinstance(node.func, ast.Attribute) and node.func.attr in METHODS:
                found.append(f"{where}: .{node.func.attr}() ({METHODS[node.func.attr]})")
            elif last == "from_pretrained" and "Model" in name and "use_safetensors" not in keywords \
                    and "gguf_file" not in keywords:
                found.append(f"{where}: {name} without use_safetensors")
        elif isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in called and \
                isinstance(getattr(node, "ctx", None), ast.Load):
            name = qualified(node, names)
            if name in PICKLING or name in UNLESS:  # passed on or stored: called later with arguments unseen here
                found.append(f"{where}: {name} referenced without a call")
    return found


def test_no_pickle_in_the_package():
    found = [o for path in SOURCES for o in offences(path)]
    assert not found, "\n".join(found)


PLANTED = ["import pickle", "import torch.distributed as dist\ndist.broadcast_object_list(box, src=0)",
           "import torch\ntorch.load(path)", "import torch\ntorch.load(path, weights_only=False)",
           "from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained(name)",
           "import numpy as np\nnp.load(f, allow_pickle=True)",
           # spelled through the imports
           "from torch import load\nload(p)", "from torch import load as read\nread(p)",
           "import torch.serialization\ntorch.serialization.load(p)", "from torch.serialization import load\nload(p)",
           "import torch as t\nt.load(p)", "import torch as t\nt.save(x, p)", "import numpy\nnumpy.save(p, x)",
           "import pandas\npandas.read_pickle(p)", "import pandas as pd\npd.read_pickle(p)",
           "from pandas import read_pickle\nread_pickle(p)", "frame.to_pickle(p)",
           "import importlib\nimportlib.import_module('pickle')", "__import__('marshal')",
           "import torch\nloader = torch.load\nloader(p)", "import functools, torch\nfunctools.partial(torch.load)(p)",
           "def f(p):\n    from torch import load\n    return load(p)"]
SAFE = ["import torch\ntorch.load(p, weights_only=True)", "import numpy as np\nnp.load(p)",
        "from safetensors.torch import load_file\nload_file(p)", "import json\njson.load(f)",
        "from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained(n, use_safetensors=True)",
        "def load(p):\n    return p\nload(p)", "state.load(p)", "import yaml\nyaml.safe_load(f)"]


@pytest.mark.parametrize("planted", PLANTED)
def test_the_scan_sees_a_planted_call(tmp_path, planted):
    """The scan itself: each pickle-using form it guards against is found, however the imports spell it."""
    path = tmp_path / "planted.py"
    path.write_text(planted + "\n")
    assert offences(path), planted


@pytest.mark.parametrize("safe", SAFE)
def test_the_scan_passes_safe_calls(tmp_path, safe):
    """... and calls that cannot unpickle are not flagged (the scan names only what it must)."""
    path = tmp_path / "safe.py"
    path.write_text(safe + "\n")
    assert not offences(path), safe


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
