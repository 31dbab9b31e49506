"""The settings of one `eptk tune` run (plain data, no torch), where they come from, and its default name.

config.json of a run holds these fields, the method's options (declared by the method, eptk/methods/; kept at the
top level beside these) and what tuning resolved (model dimensions, versions); `TuneConfig.from_run` reads one back
to resume or rerun it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EptkUsageError, check_choice, check_range, choices

DEFAULT_MODEL = "smollm2"
DEVICE_MAPS = ("auto", "balanced", "sequential")
SCHEDULES = ("cosine", "linear", "constant")
NAN_POLICIES = ("stop", "skip")
LR_SCALES = ("prior", "none")
# how a run computes, not what: may differ on --resume (and between a sweep file and its runs)
EXECUTION_ONLY = ("device", "backend", "grad_checkpointing")
RESUMABLE = ("steps",)                  # the one setting `--resume` may change (see TuneConfig.schedule_steps)

# The valid range of every numeric setting: (lowest, highest, lowest excluded). The upper bounds only
# keep absurd values (a typo, 1e30) from reaching torch, where they would fail obscurely or run forever.
LIMITS = {
    "tokens": (1, 4096, False), "steps": (1, 10**9, False), "batch_size": (1, 65536, False),
    "grad_accum": (1, 65536, False), "lr": (0.0, 10.0, True), "weight_decay": (0.0, 100.0, False),
    "prior_weight": (0.0, 1e6, False), "prior_jitter": (0.0, 1.0, False), "warmup": (0, 10**9, False), "clip": (0.0, 1e6, False),
    "eval_every": (0, 10**9, False), "eval_size": (0, 10**7, False), "test_size": (0, 10**7, False),
    "train_size": (1, 10**8, False), "checkpoint_every": (0, 10**9, False), "seed": (0, 2**32 - 1, False),
    # region:new needs more than its k = 5 neighbours; a covariance's shrinkage needs a few rows
    "stats_samples": (16, 10**7, False),
    "early_stop": (0, 10**6, False), "early_stop_delta": (0.0, 1.0, False),
}
# options of other commands that share a bound: sweep and reproduce's --jobs; the tokens generate and analyze's
# trajectories generate (the model's context window bounds them further, once it has loaded: eptk.context)
COMMAND_LIMITS = {"jobs": (1, 1024, False), "max_new_tokens": (1, 4096, False), "trajectories": (0, 10**5, False),
                  "trajectory_tokens": (2, 4096, False)}


def check_setting(name: str, value) -> None:
    """`value` inside the range of the setting `name` (LIMITS, else COMMAND_LIMITS); the error names the
    command-line option. Every command that takes the setting checks it here, against one bound."""
    lowest, highest, above = LIMITS[name] if name in LIMITS else COMMAND_LIMITS[name]
    check_range(option(name), value, lowest, highest, above=above)


@dataclass
class TuneConfig:
    model: str = DEFAULT_MODEL
    task: str = "arith"
    method: str = "deep"
    prior: str = "normal"
    prior_weight: float = 0.0
    prior_jitter: float = 0.0      # relative noise on the prior sample (priors.jitter): sensitivity studies
    tokens: int = 20
    options: dict = field(default_factory=dict)  # the method's options given (name -> value; defaults: the method's)
    steps: int = 150
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-2
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 10
    clip: float = 1.0
    eval_every: int = 25
    eval_size: int = 100
    test_size: int = 200
    train_size: int = 4000
    checkpoint_every: int = 50
    early_stop: int = 0            # evaluations without improvement before stopping (0: train every step)
    early_stop_delta: float = 0.0  # the share of the best validation loss an evaluation must improve it by
    seed: int = 0
    out: str = ""
    backend: str = "auto"
    grad_checkpointing: bool = False
    device: str = "auto"
    nan_policy: str = "stop"
    lr_scale: str = "prior"
    trust_remote_code: bool = False
    stats_samples: int = 2048
    device_map: str = ""
    allow_pickle_weights: bool = False
    # [{"at_step": s, "steps": n}, ...]: steps before s ran under a schedule for n steps in all (a run
    # extended by `--resume --steps`); later steps follow `steps`. Recorded so `--config` reruns it exactly.
    extensions: list = field(default_factory=list)
    offload_dir: str = ""

    def validate(self) -> None:
        """Checks that need no model: fail before anything is loaded or written."""
        from eptk.kernels import BACKENDS

        from .methods import METHODS
        from .priors import parse_spec

        for name, kind in setting_types().items():  # what a Python caller passed (a file's values: check_settings)
            check_value(option(name), getattr(self, name), kind)
        check_extensions(self.extensions)
        METHODS[self.method].check_options(self.options)  # an unknown method: usage error
        for name in LIMITS:
            check_setting(name, getattr(self, name))
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_device_map(self.device_map, self.offload_dir)
        check_choice("--lr-scale", self.lr_scale, LR_SCALES)
        check_choice("--nan-policy", self.nan_policy, NAN_POLICIES)
        check_choice("--backend", self.backend, BACKENDS)
        if self.early_stop and not (self.eval_every and self.eval_size):
            raise EptkUsageError("--early-stop stops on the validation loss: give --eval-every N and --eval-size N "
                                 "(both > 0) with it")
        parse_spec(self.prior)

    def schedule_steps(self, step: int) -> int:
        """The total number of steps the learning-rate schedule of `step` (0-based) decays over: `steps`,
        or, before the point where `--resume --steps` extended the run, the total it had then."""
        for part in sorted(self.extensions, key=lambda e: e["at_step"]):
            if step < int(part["at_step"]):
                return int(part["steps"])
        return self.steps

    def differences(self, given: dict) -> list[str]:
        """The settings in `given` (options the user named; the method's under "options") that differ from these,
        as "--name VALUE (run: VALUE)"; the settings `--resume` may change (RESUMABLE, EXECUTION_ONLY) are left
        out."""
        out = []
        for name, value in given.items():
            if name == "options":
                have = dataclasses.asdict(self.method_options())
                out += [f"{option(k)} {v} (run: {have.get(k)})" for k, v in value.items() if have.get(k) != v]
                continue
            if name in (*RESUMABLE, *EXECUTION_ONLY, "out") or not hasattr(self, name):
                continue
            have = getattr(self, name)
            if value != have:
                out.append(f"{option(name)} {value} (run: {have})")
        return out

    def method_options(self):
        """The method's options instance (checked; defaults for those not given)."""
        from .methods import METHODS

        return METHODS[self.method].check_options(self.options)

    @classmethod
    def from_dict(cls, data: dict, where: str = "run config") -> "TuneConfig":
        """The settings in a dict such as config.json or a sweep run's settings, checked like the options they stand
        for (`check_settings`: names, types); the keys eptk records beside the settings (RECORDED) are passed over.
        The method's options are the keys its declaration names, read as the method reads its config.json; other
        methods' options (an older config.json recorded layers, soft and keep_sink for every method) are passed
        over too."""
        from .methods import METHODS
        from .options import fields_of, kind_of

        if not isinstance(data, dict):
            raise EptkUsageError(f"{where}: a run config is a JSON object of settings (got {type(data).__name__})")
        option_kinds = {name: kind_of(f) for method in METHODS.values() for name, f in fields_of(method.Options).items()}
        settings = {k: v for k, v in data.items() if k not in option_kinds}
        for key in data.keys() & option_kinds.keys():  # typed even where another method's (an older config.json's)
            if data[key] is not None and not (key == "layers" and isinstance(data[key], list)):  # resolved layers
                check_value(f"{where}: {key}", data[key], option_kinds[key])
        cfg = cls(**check_settings(settings, where, recorded=RECORDED))
        if cfg.method in METHODS:  # (an unknown method is refused by validate, naming the valid ones)
            cfg.options = METHODS[cfg.method].options_from_config(data)
        return cfg

    @classmethod
    def from_run(cls, path) -> "TuneConfig":
        """The settings of the run in `path`, to continue it (`--resume`)."""
        from .runs import CONFIG, RunDir

        data = RunDir(path).resume_config()
        cfg = cls.from_dict(local_paths(data, Path(path).resolve().parent), f"--resume {Path(path) / CONFIG}")
        cfg.out = str(path)
        return cfg

    @classmethod
    def from_file(cls, path, out=None) -> "TuneConfig":
        """The settings of a config.json, to rerun them (`--config`), into `out` when given. Its relative paths
        are relative to the folder that holds its run (config.json's grandparent), wherever that is now."""
        from .io import read_json_object

        data = local_paths(read_json_object(path, "--config"), Path(path).resolve().parent.parent)
        cfg = cls.from_dict(data, f"--config {path}")
        cfg.out = str(out) if out is not None else cfg.out
        return cfg


# ---- the one schema of the settings: the command line, --config, --resume and a sweep's [fixed] --------------

# What eptk records in config.json beside the settings: what tuning resolved (layers, model dimensions, the model's
# source and identity, parameters, learning-rate scales, statistics, the sink token, a prior's acceptance rate),
# versions and the run's name, and what `import-peft` notes. `--config` and `--resume` pass over them; any other
# key that is not a setting is refused (a typo would otherwise be silently ignored).
RECORDED = ("layers_resolved", "layers_spec", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
            "model_source", "model_id", "versions", "name", "parameters", "lr_scales", "stats", "sink_token_id",
            "prior_acceptance_rate", "imported_from", "peft_type", "peft_version",
            "extra")  # extra: the method options' old home (an older config.json), now top-level keys
KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "list": "a list",
         "dict": "an object"}


def setting_types() -> dict[str, str]:
    """Every setting with its type ("int", "float", "str", "bool", "list", "dict"): TuneConfig's fields. The CLI's
    options carry the same types (a test compares them)."""
    return {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(TuneConfig)}


def check_value(where: str, value, kind: str):
    """`value` as a setting of type `kind`, or a usage error "`where` must be an integer (got 2.5)". A JSON or TOML
    integer serves as a number and as a string (layers = 4); true and false serve only as a bool."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {"int": number and isinstance(value, int), "float": number, "bool": isinstance(value, bool),
          "str": isinstance(value, str) or (number and isinstance(value, int)),
          "list": isinstance(value, list), "dict": isinstance(value, dict)}.get(kind, False)
    if not ok:
        raise EptkUsageError(f"{where} must be {KINDS.get(kind, kind)} (got {json_text(value)})")
    return {"str": str, "float": float}.get(kind, lambda v: v)(value)


def check_settings(data: dict, where: str, *, names=None, recorded=()) -> dict:
    """The settings in `data` with their types checked and converted (`check_value`), for a config file, a run's
    config.json or a sweep's [fixed]; a key that is neither one of `names` (default: every setting) nor in
    `recorded` is refused naming the valid ones (and the nearest, for a typo). Keys in `recorded` are dropped.
    A null is a value the file does not record (an imported adapter's task): kept, and refused by `validate`
    unless an option gives the setting."""
    import difflib

    types = setting_types()
    names = list(types) if names is None else list(names)
    out = {}
    for key, value in data.items():
        if key in recorded and key not in names:
            continue
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise EptkUsageError(f"{where}: unknown setting {key!r}{hint}; valid: {choices(names)}")
        out[key] = value if value is None else check_value(f"{where}: {key}", value, types[key])
    return out


def check_extensions(extensions: list) -> None:
    """`extensions` as `--resume --steps` records them: [{"at_step": S, "steps": N}, ...], steps within range."""
    for part in extensions:
        if not isinstance(part, dict) or set(part) != {"at_step", "steps"}:
            raise EptkUsageError(f"extensions: each entry is {{\"at_step\": S, \"steps\": N}} (got {json_text(part)})")
        for key in ("at_step", "steps"):
            check_value(f"extensions: {key}", part[key], "int")
            check_setting("steps", part[key])


def json_text(value) -> str:
    """A value as the file wrote it (true, null, "text", 2.5), for messages about a file's values."""
    import json
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


# Settings that can hold a path, with the text before it ("" = the whole value). config.json records each path
# relative to the folder that holds the run when it lies inside it (a study's runs, their posterior: priors, a
# task file beside them), so a committed study reruns from its config.json files on any machine.
PATH_SETTINGS = {"out": "", "model": "", "task": "jsonl:", "prior": "posterior:", "device_map": "",
                 "offload_dir": ""}


def is_tiny_name(name: str) -> bool:
    """`tiny` or `tiny:<family>`: a random small model made in code (eptk.models), never a path or a hub id."""
    return name == "tiny" or name.startswith("tiny:")


def _names_a_model(value: str) -> bool:
    """A packaged or tiny model is loaded by name even when a folder of that name lies in the working directory
    (models.model_kind checks names first), so its name is never rewritten as a path."""
    from .packaged import PACKAGED
    return value in PACKAGED or is_tiny_name(value)


def _path_settings(settings: dict):
    """(name, prefix, path) of each setting in `settings` that holds a path (PATH_SETTINGS)."""
    for name, prefix in PATH_SETTINGS.items():
        value = settings.get(name)
        if name == "model" and isinstance(value, str) and _names_a_model(value):
            continue
        if isinstance(value, str) and value.startswith(prefix) and value[len(prefix):]:
            yield name, prefix, Path(value[len(prefix):])


def portable_paths(settings: dict, base: Path) -> dict:
    """`settings` as config.json records them: paths inside `base` relative to it (POSIX), others unchanged."""
    base = Path(base).resolve()
    out = dict(settings)
    for name, prefix, path in _path_settings(settings):
        if path.exists() or name == "out" or prefix:  # behind a prefix (posterior:, jsonl:) it is always a path
            try:
                out[name] = prefix + path.resolve().relative_to(base).as_posix()
            except ValueError:
                pass  # outside the run's folder: the user's own path, kept as given
    return out


def local_paths(settings: dict, base: Path) -> dict:
    """The inverse of `portable_paths` for a run whose folder now lies in `base`: a relative path that exists
    under `base` (or is the run's own `out`) becomes that path; anything else is left as written."""
    out = dict(settings)
    for name, prefix, path in _path_settings(settings):
        if not path.is_absolute() and (name == "out" or (Path(base) / path).exists()):
            out[name] = prefix + str(Path(base) / path)
    return out


def option(name: str) -> str:
    """The command-line option of a setting: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def check_device_map(device_map: str, offload_dir: str = "") -> None:
    """A --device-map value names a strategy or an existing JSON file (read against the model when it loads)."""
    if device_map and device_map not in DEVICE_MAPS and not (device_map.endswith(".json") and Path(device_map).is_file()):
        raise EptkUsageError(f"unknown --device-map {device_map!r}; valid: {choices(DEVICE_MAPS)} or an existing FILE.json")
    if offload_dir and not device_map:
        raise EptkUsageError("--offload-dir holds the weights a --device-map puts on \"disk\"; give --device-map too")


def default_run_name(cfg: TuneConfig) -> str:
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s)).strip("-")  # noqa: E731
    model = safe(Path(cfg.model).name if "/" in cfg.model else cfg.model)
    return str(Path("runs") / f"{model}-{safe(cfg.task)}-{cfg.method}-{safe(cfg.prior)}-s{cfg.seed}")


def cpu() -> str:
    """The CPU a run computed on: its model name and the instruction set torch's kernels use there. Float rounding,
    so a run's exact numbers (and, training being chaotic, its trajectory), can differ between machines that differ
    in either; the study's runs made on one machine did not repeat exactly on another (docs/findings/HOW.md)."""
    import platform

    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def versions() -> dict:
    """The package versions a run records in its config, and the commit of eptk's checkout when it runs from one."""
    import platform

    import torch
    import transformers

    from .version import __version__, source_commit
    out = {"eptk": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    if commit := source_commit():  # the code that made the run, when eptk runs from its git checkout
        out["eptk_commit"] = commit
    out["cpu"] = cpu()
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        pass
    return out
