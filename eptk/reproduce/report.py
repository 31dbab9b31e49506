"""The study's report: FINDINGS.md and findings.html (the claims table first, then each claim with its
numbers and figure), runs.csv (one row per run), claims.json (every claim's numbers), figures/*.png,
with the command that made them and the library versions."""
from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

from ..config import portable_paths
from ..io import write_json_atomic, write_text_atomic
from . import provenance
from .budget import V3
from .beside import disagreements, link
from .claims import CLAIMS
from .gather import TRAINING_STAGES, Gathered
from .inference import fmt
from .rerun_check import RECORD as RERUNS

RUN_COLUMNS = ("run", "stage", "status", "task", "method", "layers", "prior", "prior_weight", "lr", "lr_scale",
               "keep_sink", "seed", "steps", "stopped_early", "best_step", "test_items", "baseline_score", "tuned_score",
               "best_val_loss", "stalled", "final_train_loss", "displacement", "inside_share", "distance",
               "slot0_mass", "trained_slot_mass")
STAGE_GROUPS = {"version-2 design (converged, ablation)": ("converged", "ablation"),
                "version-1 runs reused (main, transfer, sink)": ("main", "transfer", "sink")}


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return _clean(value.item())
        except (ValueError, RuntimeError):
            return None
    return value


def final_loss(run, last: int = 10) -> float:
    tail = [v for _, v in run.losses[-last:] if v is not None and math.isfinite(v)]
    return float(sum(tail) / len(tail)) if tail else math.nan


def run_rows(g: Gathered) -> list[dict]:
    from .claims.sink import mean_mass

    rows = []
    for stage in TRAINING_STAGES:
        for run in g.study.stage_runs[stage]:
            s = portable_paths(run.settings, g.study.out)  # a transfer's posterior: by run name, no machine folder
            row = {"run": run.name, "stage": stage, "status": "complete" if run.name in g.runs else "missing",
                   "task": s["task"], "method": s["method"], "layers": s.get("layers", ""), "prior": s["prior"],
                   "prior_weight": s.get("prior_weight", 0.0), "lr": s.get("lr"), "lr_scale": s.get("lr_scale"),
                   "keep_sink": s.get("keep_sink", False), "seed": s["seed"], "steps": s.get("steps")}
            tuned = g.runs.get(run.name)
            if tuned is not None:
                place = g.position(tuned) or {}
                stop = tuned.extra.get("early_stop") or {}
                row.update(stopped_early=stop.get("stopped"), best_step=stop.get("best_step"),
                           test_items=tuned.extra["test_items"] or None, baseline_score=tuned.baseline,
                           tuned_score=tuned.score, best_val_loss=tuned.best_val, stalled=tuned.stalled,
                           final_train_loss=final_loss(tuned), displacement=tuned.extra["displacement"],
                           inside_share=place.get("inside_share"), distance=place.get("distance"),
                           slot0_mass=mean_mass(tuned.extra["eval"].get("prefix_mass_first_slot"), 0),
                           trained_slot_mass=mean_mass(tuned.extra["eval"].get("prefix_mass_other_slots"), 0))
            rows.append(row)
    return rows


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RUN_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if _clean(r.get(k)) is None else _clean(r.get(k)) for k in RUN_COLUMNS})
    return buf.getvalue()


def _statistic(result: dict) -> str:
    """The claim's headline numbers, each with its interval where it has one (nested tables are in its section)."""
    parts = []
    for name, value in (result.get("statistics") or {}).items():
        if isinstance(value, dict) and "mean" in value:
            parts.append(f"{name} {fmt(value)}")
        elif isinstance(value, dict) and "rho" in value:
            parts.append(f"{name} ρ {value['rho']:.2f} (p {value['p']:.3g})" if _finite(value.get("rho")) else f"{name} n/a")
        elif isinstance(value, bool):
            parts.append(f"{name} {'yes' if value else 'no'}")
        elif isinstance(value, float) and math.isfinite(value):
            parts.append(f"{name} {value:.2f}")
        elif isinstance(value, int):
            parts.append(f"{name} {value}")
    return "; ".join(parts) or "—"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        return fmt(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else "n/a"
    return "" if value is None else str(value)


def _md_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k)).replace("|", "/") for k in keys) + " |" for r in rows]
    return lines


def write_report(g: Gathered, results: list[dict], *, command: str, versions: dict, into: Path | None = None,
                 beside: list[dict] = ()) -> dict:
    """FINDINGS.md, findings.html, runs.csv, claims.json and figures/ in `into` (default: the study folder);
    `beside`: other models' verdicts (beside.load_beside), a column each."""
    out = Path(into) if into is not None else g.study.out
    beside = [dict(b, findings=link(b, out)) for b in beside]   # each other report's page, relative to `out`
    figures = {r["claim"]: (CLAIMS[r["claim"]].draw(r, out / "figures") if CLAIMS[r["claim"]].draw else [])
               for r in results}
    rows = run_rows(g)
    groups = {label: [g.study.run_dir(r) for stage in stages for r in g.study.stage_runs[stage] if r.name in g.runs]
              for label, stages in STAGE_GROUPS.items()}
    continued = [g.paths[name] for name in g.runs if g.paths[name].name.startswith(V3)]
    record = provenance.record(out, groups, {"^## Amendment 1 ": {"continued claim-2 runs (v3-)": continued}})
    write_text_atomic(out / "runs.csv", _csv(rows))
    write_json_atomic(out / "claims.json", _clean({"model": g.study.model, "command": command, "versions": versions,
                                                   "provenance": record,
                                                   "beside": [{k: b[k] for k in ("model", "findings")} for b in beside],
                                                   "claims": [{k: v for k, v in r.items() if k != "items"}
                                                              for r in results]}))
    md = _markdown(g, results, figures, command, versions, record, out, beside)
    write_text_atomic(out / "FINDINGS.md", md)
    write_text_atomic(out / "findings.html", _html(md, out))
    return {"FINDINGS.md": out / "FINDINGS.md", "findings.html": out / "findings.html", "runs.csv": out / "runs.csv",
            "claims.json": out / "claims.json"}


def _markdown(g: Gathered, results, figures, command, versions, record, out: Path, beside=()) -> str:
    complete = len(g.runs)
    total = sum(len(g.study.stage_runs[s]) for s in TRAINING_STAGES)
    lines = ["# Findings: embedding priors in prompt-tuning, measured", "",
             f"Model `{g.study.model}`; {complete} of {total} runs complete. Each verdict follows the rule printed "
             f"next to it (the whole rule: docs/findings/RULES.md, version {provenance.RULES_VERSION}); intervals "
             f"are 95%, from scipy.stats and statsmodels, over runs (seeds).", "",
             provenance.describe(record), ""]
    lines += _summary(g.study.model, results, beside)
    lines += ["", f"Command: `{command}`", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    for r in results:
        lines += [f"## Claim {r['claim']}: {r['text']}", "", f"**{r['verdict']}**: {r['why']}", ""]
        for b in beside:
            other = b["claims"].get(r["claim"])
            if other is not None:
                lines += [f"On {b['model']}: **{other['verdict']}**: {other.get('why', '')} "
                          f"({_statistic(other)}; [its findings]({b['findings']}))", ""]
        figure = r.get("figure") or {}
        for key, rows in figure.items():
            if key in ("curves", "rows") or not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
                continue
            if key != "table":
                lines += [f"*{key.replace('_', ' ')}*", ""]
            lines += _md_table([{k: v for k, v in row.items() if not isinstance(v, (list, tuple))} for row in rows])
            lines.append("")
        for path in figures.get(r["claim"], []):
            lines += [f"![claim {r['claim']}]({Path(path).relative_to(out).as_posix()})", ""]
    lines += _reruns(out)
    return "\n".join(lines) + "\n"


def _reruns(out: Path) -> list[str]:
    """The *Reruns* section from OUT/reruns.jsonl (none without it; rerun_check): how many committed runs, trained
    again from their config.json, scored within their arm's seeds, and a row each (its latest check)."""
    from ..io import read_jsonl

    latest = {row["run"]: row for row in read_jsonl(out / RERUNS) if isinstance(row, dict) and "run" in row}
    if not latest:
        return []
    rows = list(latest.values())
    within = sum(bool(r.get("within_arm")) for r in rows)
    repeated = sum(r.get("departs_at") is None for r in rows)
    table = [{"run": r["run"], "score": r.get("score"), "rerun score": r.get("rerun_score"),
              "departs at": r.get("departs_at"), "arm's seeds": r.get("arm_runs"),
              "their scores": "–".join(_cell(v) for v in r.get("arm_range") or ()),
              "prediction interval": "–".join(_cell(v) for v in r.get("prediction_interval") or ()),
              "within": r.get("within_arm"),
              **{f"{side} on": (r.get(key) or {}).get("cpu") or "not recorded"
                 for side, key in (("made", "made_by"), ("rerun", "rerun_by"))}} for r in rows]
    return ["## Reruns", "",
            f"Committed runs trained again from their config.json ({RERUNS}, by docs/findings/background/rerun.sh): "
            f"{within} of {len(rows)} scored within the 95% prediction interval of their arm (one more seed of it, t "
            f"from its seeds' scores); {repeated} of {len(rows)} "
            f"repeated every validation loss of the committed run (the others depart at the step given; empty: none).", "",
            *_md_table(table), ""]


def _summary(model: str, results, beside) -> list[str]:
    """The claims table: this study's statistic and verdict (columns named after each model once others stand
    beside it), one pair of columns per other model, and then a sentence for each claim on which measured
    verdicts differ."""
    named = (lambda m: f"{m}: ") if beside else (lambda m: "")
    names = [model] + [b["model"] for b in beside]
    lines = ([f"Models: {model} (this study), " + ", ".join(f"{b['model']} ([its findings]({b['findings']}))"
                                                          for b in beside) + ".", ""] if beside else [])
    lines += ["| claim | " + " | ".join(f"{named(m)}statistic | {named(m)}verdict" for m in names) + " | rule |",
              "|---|" + "---|---|" * len(names) + "---|"]
    for r in results:
        cells = [f"{_statistic(r)} | **{r['verdict']}**"]
        for b in beside:
            other = b["claims"].get(r["claim"])
            cells.append("— | not in its report" if other is None else f"{_statistic(other)} | **{other['verdict']}**")
        lines.append(f"| {r['claim']}. {r['text']} | " + " | ".join(cells) + f" | {r['rule']} |")
    if beside:
        lines += [""] + (disagreements(model, results, beside) or
                         ["No claim measured on two models has different verdicts."])
    return lines


def _html(md: str, out: Path) -> str:
    """A self-contained page from the markdown: tables, headings, paragraphs, figures embedded as data URIs."""
    body, table = [], []

    def inline(text: str) -> str:
        text = html.escape(text)
        for mark, tag in (("**", "b"), ("`", "code")):
            parts = text.split(mark)
            text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
        # a link to another model's findings opens that model's page
        return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)",
                      lambda m: f'<a href="{m[2].replace("FINDINGS.md", "findings.html")}">{m[1]}</a>', text)

    def flush():
        if table:
            cells = [[c.strip() for c in row.strip("|").split("|")] for row in table if not row.startswith("|---")]
            head, *rest = cells
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rest) +
                        "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("![") and "](" in line:
            src = line[line.index("](") + 2:-1]
            data = base64.b64encode((out / src).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(src)}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>eptk findings</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")
