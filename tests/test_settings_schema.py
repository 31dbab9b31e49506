"""One schema for the settings of `eptk tune`: the command line, `--config`, `--resume` and a sweep's [fixed] take
the same names and types (eptk.config: TuneConfig's fields, `check_settings`), and every config.json eptk writes
(or has committed: the study's runs, the 0.1 fixture) reads back through it, its recorded keys (RECORDED) passed
over. The refusals themselves are in tests/test_bad_input.py."""
import inspect
import json
from pathlib import Path

import pytest

from eptk.config import RECORDED, TuneConfig, setting_types
from eptk.errors import EptkUsageError

ROOT = Path(__file__).parent.parent
COMMITTED = sorted([*ROOT.glob("docs/findings/**/config.json"), *ROOT.glob("tests/fixtures/**/config.json")])
NOT_OPTIONS = ("extensions", "options")  # recorded by --resume --steps; the method's own options: no one option


def test_every_committed_config_reads_back():
    assert any("fixtures" in str(p) for p in COMMITTED), COMMITTED
    for path in COMMITTED:
        cfg = TuneConfig.from_file(path)
        data = json.loads(path.read_text())
        assert cfg.tokens == data["tokens"], path
        if data["method"] == "deep":  # --layers is deep's option since the methods own their options
            assert cfg.options["layers"] == data["layers_spec"], path


def test_the_command_line_takes_the_schema_types():
    """cli/tune.py declares each option's type again (Typer reads annotations): they must be the schema's."""
    from eptk.cli.tune import tune

    options = inspect.signature(tune).parameters
    types = setting_types()
    for name, kind in types.items():
        if name in NOT_OPTIONS:
            continue
        assert name in options, f"setting {name} has no option"
        annotation = str(options[name].annotation)
        assert annotation == kind or (name == "out" and "Path" in annotation), (name, annotation, kind)


def test_runs_and_imported_adapters_read_back(tmp_path, run_cli, monkeypatch):
    """Every key a fresh run's and an imported adapter's config.json hold is a setting or a RECORDED key."""
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    run, adapter, imported = tmp_path / "run", tmp_path / "adapter", tmp_path / "imported"
    code, _, err = run_cli("tune", "--model", "tiny", "--method", "soft", "--keep-sink", "--steps", "1",
                           "--batch-size", "2", "--eval-size", "2", "--test-size", "2", "--train-size", "8",
                           "--quiet", "--out", run)
    assert code == 0, err
    assert run_cli("export", run, "--out", adapter)[0] == 0
    assert run_cli("import-peft", adapter, "--out", imported, "--model", "tiny")[0] == 0
    from eptk.methods import METHODS
    from eptk.options import fields_of
    names = set(setting_types()) | set(RECORDED) | {n for m in METHODS.values() for n in fields_of(m.Options)}
    for folder in (run, imported):
        data = json.loads((folder / "config.json").read_text())
        assert set(data) <= names, set(data) - names
        TuneConfig.from_file(folder / "config.json")


@pytest.mark.parametrize("value, message", [(2.5, "must be an integer (got 2.5)"), (True, "must be an integer (got true)"),
                                            ("4", 'must be an integer (got "4")')])
def test_config_file_and_sweep_refuse_alike(tmp_path, value, message):
    """The same bad value gets the same words from --config and from a sweep's [fixed]."""
    from eptk.sweep import load_sweep

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "tiny", "tokens": value}))
    toml = tmp_path / "s.toml"
    toml.write_text(f"seeds = [0]\n[fixed]\nmodel = \"tiny\"\ntokens = {json.dumps(value)}\n")
    for read in (lambda: TuneConfig.from_file(config), lambda: load_sweep(toml)):
        with pytest.raises(EptkUsageError, match="tokens " + message.replace("(", r"\(").replace(")", r"\)")):
            read()
