"""The study's report: FINDINGS.md and findings.html (the claims table first, then each claim with its
numbers and figure), runs.csv (one row per run), claims.json (every claim's numbers), figures/*.png,
with the command that made them and the library versions."""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from ..io import write_json_atomic, write_text_atomic
from .figures import draw
from .gather import Gathered
from .intervals import fmt

RUN_COLUMNS = ("run", "stage", "status", "task", "method", "layers", "prior", "prior_weight", "keep_sink", "seed",
               "steps", "baseline_score", "tuned_score", "final_val_loss", "final_train_loss", "displacement",
               "inside_share", "prompt_mass", "sink_mass")


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


def run_rows(g: Gathered) -> list[dict]:
    from .claims import final_loss

    rows = []
    for stage in ("main", "transfer", "sink"):
        for run in g.study.stage_runs[stage]:
            s = run.settings
            row = {"run": run.name, "stage": stage, "status": "complete" if run.name in g.runs else "missing",
                   "task": s["task"], "method": s["method"], "layers": s.get("layers", ""), "prior": s["prior"],
                   "prior_weight": s.get("prior_weight", 0.0), "keep_sink": s.get("keep_sink", False),
                   "seed": s["seed"], "steps": s.get("steps")}
            tuned = g.runs.get(run.name)
            if tuned is not None:
                row.update(baseline_score=tuned.baseline, tuned_score=tuned.score,
                           final_val_loss=tuned.val[-1][1] if tuned.val else None,
                           final_train_loss=final_loss(tuned), displacement=tuned.extra["displacement"],
                           inside_share=g.inside_share(tuned), prompt_mass=tuned.extra["prompt_mass"],
                           sink_mass=tuned.extra["sink_mass"])
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
    """The claim's headline numbers, each with its interval."""
    parts = []
    for name, value in (result.get("statistics") or {}).items():
        if isinstance(value, dict) and "mean" in value:
            parts.append(f"{name} {fmt(value)}")
        elif isinstance(value, dict) and value and all(isinstance(v, dict) and "mean" in v for v in value.values()):
            parts += [f"{name}[{k}] {fmt(v, 1)}" for k, v in value.items()]
        elif isinstance(value, dict):
            parts += [f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in value.items() if isinstance(v, float))]
        elif isinstance(value, float) and math.isfinite(value):
            parts.append(f"{name} {value:.2f}")
        elif isinstance(value, int):
            parts.append(f"{name} {value}")
    return "; ".join(parts) or "—"


def _cell(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        return fmt(value)
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


def write_report(g: Gathered, results: list[dict], *, command: str, versions: dict, trajectory_rows=()) -> dict:
    out = g.study.out
    figures = {r["claim"]: draw(r, out / "figures", trajectory_rows if r["claim"] == "3" else ()) for r in results}
    rows = run_rows(g)
    write_text_atomic(out / "runs.csv", _csv(rows))
    write_json_atomic(out / "claims.json", _clean({"command": command, "versions": versions,
                                                   "claims": [{k: v for k, v in r.items() if k != "items"}
                                                              for r in results]}))
    md = _markdown(g, results, figures, command, versions)
    write_text_atomic(out / "FINDINGS.md", md)
    write_text_atomic(out / "findings.html", _html(md, out))
    return {"FINDINGS.md": out / "FINDINGS.md", "findings.html": out / "findings.html", "runs.csv": out / "runs.csv",
            "claims.json": out / "claims.json"}


def _markdown(g: Gathered, results, figures, command, versions) -> str:
    complete = len(g.runs)
    total = sum(len(v) for k, v in g.study.stage_runs.items())
    lines = ["# Findings: embedding priors in prompt-tuning, measured", "",
             f"Model `{g.study.model}`; {complete} of {total} runs complete. Every interval is a 95% interval over "
             f"seeds; each verdict follows the rule printed next to it (docs/findings/RULES.md).", "",
             "| claim | statistic (95% CI) | verdict | rule |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['claim']}. {r['text']} | {_statistic(r)} | **{r['verdict']}** | {r['rule']} |")
    lines += ["", f"Command: `{command}`", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    for r in results:
        lines += [f"## Claim {r['claim']}: {r['text']}", "", f"**{r['verdict']}**: {r['why']}", ""]
        lines += _md_table([{k: v for k, v in row.items() if not isinstance(v, (list, tuple))}
                            for row in (r.get("figure") or {}).get("table", [])])
        lines.append("")
        for path in figures.get(r["claim"], []):
            lines += [f"![claim {r['claim']}]({path.relative_to(g.study.out).as_posix()})", ""]
    return "\n".join(lines) + "\n"


def _html(md: str, out: Path) -> str:
    """A self-contained page from the markdown: tables, headings, paragraphs, figures embedded as data URIs."""
    body, table = [], []

    def inline(text: str) -> str:
        text = html.escape(text)
        for mark, tag in (("**", "b"), ("`", "code")):
            parts = text.split(mark)
            text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
        return text

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
