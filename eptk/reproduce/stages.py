"""The study of `eptk reproduce`: which runs, captures and trajectories each stage holds, full or `--quick`.

Training stages are grids expanded by eptk.sweep (`expand`), so a main-grid run has exactly the name
`eptk sweep` gives it and a directory filled by `eptk sweep` is picked up as it is. Runs are selected
by their settings (`Study.runs(stage, method=..., prior=...)`), never by parsing names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EptkUsageError, choices
from ..sweep import SweepRun, expand
from ..sweep.grid import _safe
from .seed_power import arm_seeds

# Version 1's stages (main, transfer, sink, captures, trajectories) stay: claims 1, 3 and 5 read them. Version 2
# (docs/findings/RULES.md) adds early-stopped runs for claims 2 (`converged`) and 6 (`ablation`), 1,000-item
# re-evaluations of version-1 runs on 1,000 test items (`reeval`) and content-token captures of each task and two
# template variants (`tokens`, claim 4).
STAGES = ("main", "transfer", "sink", "captures", "trajectories", "converged", "ablation", "reeval", "tokens",
          "report")
# what a study folder holds besides its run folders (reproduce-<stage>.json summaries too)
STUDY_ENTRIES = {"captures", "tokens", "measures", "trajectories", "logs", "figures", "sweep.json", "FINDINGS.md", "findings.html",
                 "runs.csv", "claims.json"}
TASKS = ("arith", "qa", "fill")  # the tasks of claims 3 and 4
TOKEN_TASKS = ("arith", "qa", "qa:b", "fill", "fill:b")  # claim 4 (version 2): the tasks and two template variants
TRANSFER_TARGET = "arith:+:3"
MAIN_PRIORS = ("normal", "xavier", "fitted", "exclusion", "region:data", "region:new", "region:between:arith,qa",
               "vae")
DEEP_LAYERS = "last:3"
CONVERGED_PRIORS = ("region:data", "region:new")
ABLATION_DEPTHS = (29, 20, 10, 3)   # deep --layers last:N: every layer >= 30 - N of SmolLM2's 30
REEVAL_SIZE = 1000


@dataclass(frozen=True)
class Scale:
    """Everything that differs between the full study and `--quick`."""
    priors: tuple
    seeds: tuple
    weights: tuple               # transfer: prior weights λ of the posterior starts
    fixed: dict                  # tune settings of every run (steps, batch size, evaluation sizes, ...)
    transfer_eval_every: int
    capture_samples: int
    capture_examples: int
    trajectories: int            # test prompts per run and task
    trajectory_tokens: int
    max_sequences: int           # per task and layer, for the cluster silhouettes of claim 4
    converged: dict = field(default_factory=dict)     # version 2: tune settings of every early-stopped run
    converged_seeds: tuple = ()                        # the seeds every converged arm starts with
    ablation_seeds: tuple = ()
    soft_lrs: tuple = (1e-2, 1e-3)                     # soft's step sizes in the converged stage
    reeval_size: int = REEVAL_SIZE
    ablation_depths: tuple = ABLATION_DEPTHS


V2_FIXED = {"steps": 600, "batch_size": 16, "lr": 1e-2, "schedule": "constant", "warmup": 10, "eval_every": 25,
            "eval_size": 200, "test_size": 1000, "early_stop": 4, "early_stop_delta": 0.01, "checkpoint_every": 25,
            "tokens": 20}

FULL = Scale(priors=MAIN_PRIORS, seeds=(0, 1, 2), weights=(0.0, 1.0, 10.0, 100.0),
             fixed={"steps": 150, "batch_size": 16, "eval_every": 25, "eval_size": 100, "test_size": 200,
                    "checkpoint_every": 25},
             transfer_eval_every=10, capture_samples=2048, capture_examples=512, trajectories=16,
             trajectory_tokens=16, max_sequences=200, converged=V2_FIXED, converged_seeds=tuple(range(10)),
             ablation_seeds=(0, 1, 2))
QUICK = Scale(priors=("normal", "region:data", "region:new"), seeds=(0, 1), weights=(0.0, 10.0),
              fixed={"steps": 6, "batch_size": 4, "eval_every": 2, "eval_size": 4, "test_size": 8,
                     "checkpoint_every": 0, "tokens": 4},
              transfer_eval_every=2, capture_samples=64, capture_examples=16, trajectories=2,
              trajectory_tokens=4, max_sequences=16,
              converged={"steps": 8, "batch_size": 4, "lr": 1e-2, "schedule": "constant", "warmup": 1, "eval_every": 2,
                         "eval_size": 4, "test_size": 8, "early_stop": 2, "early_stop_delta": 0.01,
                         "checkpoint_every": 0, "tokens": 4},
              converged_seeds=(0,), ablation_seeds=(0,), reeval_size=12, ablation_depths=(3, 2, 1))


def parse_stages(names) -> tuple[str, ...]:
    """The stages to run, in study order; one-line error on an unknown name."""
    if not names:
        return STAGES
    chosen = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if name not in STAGES:
                raise EptkUsageError(f"unknown stage {name!r}; valid: {choices(STAGES)}")
            chosen.append(name)
    return tuple(s for s in STAGES if s in chosen)


@dataclass
class Capture:
    task: str
    seed: int
    name: str  # folder under <out>/captures


@dataclass
class Study:
    model: str
    out: Path
    scale: Scale
    stage_runs: dict = field(default_factory=dict)  # stage -> list[SweepRun]
    sources: dict = field(default_factory=dict)     # transfer run name -> the main run it starts from

    @classmethod
    def build(cls, model: str, out: Path, quick: bool = False) -> "Study":
        study = cls(model=model, out=Path(out).resolve(), scale=QUICK if quick else FULL)
        study.stage_runs = {"main": study._main(), "sink": study._sink()}
        study.stage_runs["transfer"] = study._transfer()
        study.stage_runs["converged"] = study._converged(study.scale.converged_seeds, arm_seeds(study))
        study.stage_runs["ablation"] = study._ablation()
        return study

    def _fixed(self) -> dict:
        return {"model": self.model, **self.scale.fixed}

    @staticmethod
    def _grid(**grid) -> dict:
        order = ("tasks", "methods", "layers", "priors", "tokens", "seeds")  # the sweep files' order (seeds innermost)
        return {k: grid[k] for k in order if k in grid}

    def _main(self) -> list[SweepRun]:
        tokens = self.scale.fixed.get("tokens", 20)
        fixed = {k: v for k, v in self._fixed().items() if k != "tokens"}
        grid = self._grid(tasks=["arith"], methods=["soft", "deep"], layers=[DEEP_LAYERS],
                          priors=list(self.scale.priors), tokens=[tokens], seeds=list(self.scale.seeds))
        return expand(grid, fixed, "reproduce main")

    def _sink(self) -> list[SweepRun]:
        runs = []
        for keep in (False, True):
            fixed = dict(self._fixed(), keep_sink=True) if keep else self._fixed()
            for run in expand(self._grid(tasks=["arith"], methods=["deep"], layers=["all"], priors=["normal"],
                                         seeds=list(self.scale.seeds)), fixed, "reproduce sink"):
                if keep:
                    run.name = run.name.replace("-deep-all-", "-deep-all-keepsink-", 1)
                runs.append(run)
        return runs

    def _transfer(self) -> list[SweepRun]:
        fixed = dict(self._fixed(), eval_every=self.scale.transfer_eval_every)
        runs = expand(self._grid(tasks=[TRANSFER_TARGET], methods=["soft"], priors=["normal"],
                                 seeds=list(self.scale.seeds)), fixed, "reproduce transfer")
        for seed in self.scale.seeds:
            (source,) = self.runs("main", method="soft", prior="normal", seed=seed)
            for weight in self.scale.weights:
                (run,) = expand(self._grid(tasks=[TRANSFER_TARGET], methods=["soft"],
                                           priors=[f"posterior:{self.run_dir(source)}"], seeds=[seed]),
                                dict(fixed, prior_weight=float(weight)), "reproduce transfer")
                run.name = f"{_safe(TRANSFER_TARGET)}-soft-from-{source.name}-w{weight:g}"
                self.sources[run.name] = source.name
                runs.append(run)
        for i, run in enumerate(runs):
            run.index = i
        return runs

    def _v2(self, name: str, settings: dict) -> SweepRun:
        run = SweepRun(index=0, name=name, settings={"model": self.model, "task": "arith", **self.scale.converged,
                                                     **settings})
        run.config().validate()
        return run

    def converged_arms(self) -> list[dict]:
        """Claim 2's cells: deep last:3 under both --lr-scale modes, soft at both learning rates, each prior."""
        arms = [{"method": "deep", "layers": DEEP_LAYERS, "prior": prior, "lr_scale": scale}
                for prior in CONVERGED_PRIORS for scale in ("prior", "none")]
        arms += [{"method": "soft", "prior": prior, "lr": lr} for prior in CONVERGED_PRIORS for lr in self.scale.soft_lrs]
        return arms

    @staticmethod
    def arm_name(arm: dict) -> str:
        step = f"lrs{arm['lr_scale']}" if "lr_scale" in arm else f"lr{arm['lr']:g}"
        where = f"{arm['method']}-{_safe(arm['layers']).replace('-', '')}" if "layers" in arm else arm["method"]
        return f"v2-arith-{where}-{_safe(arm['prior'])}-{step}"

    def _converged(self, seeds, grown: dict[str, int] | None = None) -> list[SweepRun]:
        """Seed-major, so the arms grow together while the stage runs: every arm's first `seeds`, then the further
        seeds the power rule asks of an arm (`grown`: arm name -> seeds it needs, seed_power.arm_seeds)."""
        grown = grown or {}
        more = range(len(seeds), max([len(seeds), *grown.values()]))
        runs = [self._v2(f"{self.arm_name(arm)}-s{seed}", dict(arm, seed=seed))
                for seed in (*seeds, *more) for arm in self.converged_arms()
                if seed in seeds or grown.get(self.arm_name(arm), 0) > seed]
        for i, run in enumerate(runs):
            run.index = i
        return runs

    def regrow_converged(self) -> list[str]:
        """List the converged seeds the power rule asks for now (after runs finished); the names it adds."""
        before = {r.name for r in self.stage_runs["converged"]}
        self.stage_runs["converged"] = self._converged(self.scale.converged_seeds, arm_seeds(self))
        return [r.name for r in self.stage_runs["converged"] if r.name not in before]

    def _ablation(self) -> list[SweepRun]:
        tokens = self.scale.converged["tokens"]
        runs = []
        depths = self.scale.ablation_depths   # the deepest first: every layer >= 1 (with --keep-sink too)
        for seed in self.scale.ablation_seeds:
            for depth in depths:
                runs.append(self._v2(f"v2-arith-deep-last{depth}-normal-t{tokens}-s{seed}",
                                     {"method": "deep", "layers": f"last:{depth}", "prior": "normal", "seed": seed}))
            runs.append(self._v2(f"v2-arith-deep-last{depths[0]}-keepsink-normal-t{tokens}-s{seed}",
                                 {"method": "deep", "layers": f"last:{depths[0]}", "prior": "normal", "keep_sink": True,
                                  "seed": seed}))
        for i, run in enumerate(runs):
            run.index = i
        return runs

    # ---- selection -----------------------------------------------------------------------------
    def runs(self, stage: str, **settings) -> list[SweepRun]:
        """The stage's runs whose settings match every given value (prior_weight / keep_sink default 0 / off)."""
        defaults = {"prior_weight": 0.0, "keep_sink": False}
        return [r for r in self.stage_runs[stage]
                if all(r.settings.get(k, defaults.get(k)) == v for k, v in settings.items())]

    def run_dir(self, run: SweepRun) -> Path:
        return self.out / run.name

    def source_of(self, run: SweepRun) -> SweepRun | None:
        """The main-grid run whose posterior a transfer run starts from (None for a fresh start)."""
        name = self.sources.get(run.name)
        return next((r for r in self.stage_runs["main"] if r.name == name), None)

    def captures(self) -> list[Capture]:
        return [Capture(task, seed, f"{task}-s{seed}") for task in TASKS for seed in self.scale.seeds]

    def capture_dir(self, capture: Capture) -> Path:
        return self.out / "captures" / capture.name

    def token_captures(self) -> list[Capture]:
        """Claim 4's content-token captures: each task and template variant at each capture seed."""
        return [Capture(task, seed, f"{_safe(task)}-s{seed}") for task in TOKEN_TASKS for seed in self.scale.seeds]

    def token_dir(self, capture: Capture) -> Path:
        return self.out / "tokens" / capture.name

    def trajectory_runs(self) -> list[SweepRun]:
        """Main runs whose generations claim 3 measures: soft and deep, from `normal` and `region:new`."""
        return [r for prior in ("normal", "region:new") for r in self.runs("main", prior=prior)]

    def trajectory_dir(self, run: SweepRun) -> Path:
        return self.out / "trajectories" / run.name

    def check_folder(self) -> None:
        """Refuse an --out that holds files but nothing of a study: its runs, captures and report would
        be scattered among someone else's files. A new, empty or earlier study folder is fine."""
        from ..io import check_folder_is_ours

        own = {run.name for runs in self.stage_runs.values() for run in runs} | STUDY_ENTRIES
        check_folder_is_ours(self.out, "--out", "a reproduction study",
                             lambda folder: any(p.name in own or p.name.startswith("reproduce-")
                                                for p in folder.iterdir()),
                             hint="choose a new or empty folder, or an earlier study's")
