"""report.html of `eptk analyze`: one self-contained file (CSS inline, figures as base64 PNG
data URIs) that opens with the findings table, then the figures, then the detailed tables."""
from __future__ import annotations

import base64
import datetime as _dt
import math
import re
from html import escape
from pathlib import Path

from ..io import write_text_atomic

KEY_COLUMNS = ("run", "block", "disp_l2_rel", "disp_cos", "nn_kept_share", "prior_collapsed_share", "post_collapsed_share",
               "post_max_cos", "post_norm_pctile", "post_anisotropy", "post_eff_rank", "prior_inside_share",
               "post_inside_share", "post_maha_rel", "post_knn_precision", "post_knn_coverage", "post_mmd_p", "post_energy_p")

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto; max-width: 1400px;
       padding: 0 16px; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
ul.notes li { color: #7a4b00; }
code { background: #f3f4f6; padding: 0 3px; }
"""


def _cell(value) -> tuple[str, bool]:
    if value is None:
        return "", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, float):
        if not math.isfinite(value):
            return "", True
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3e}", True
        return f"{value:.4g}", True
    if isinstance(value, int):
        return str(value), True
    return escape(str(value)), False


def _table(rows: list[dict], columns, header_titles: dict | None = None) -> str:
    head = "".join(f'<th title="{escape((header_titles or {}).get(c, ""))}">{escape(c)}</th>' for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            text, numeric = _cell(r.get(c))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _inline_code(text: str) -> str:
    """Escape `text`, turning its `backticked` spans (the column docs are Markdown) into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def png_data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _token(t) -> str:
    return escape(repr(t) if isinstance(t, str) else str(t))


def _neighbours(details: dict) -> str:
    parts = []
    for run, blocks in details.items():
        for block, sides in blocks.items():
            post, prior = sides.get("posterior"), sides.get("prior")
            main = post or prior
            if not main:
                continue
            label = "posterior" if post else "prior"
            rows = []
            for i, slot in enumerate(main):
                toks = ", ".join(f"{_token(t)} ({c:.2f})" for t, c in zip(slot["tokens"], slot["cos"]))
                prior_tok = _token(prior[i]["tokens"][0]) if prior and i < len(prior) else ""
                kept = {True: "yes", False: "no"}.get(slot.get("nn_kept"), "")
                rows.append(f"<tr><td class='num'>{slot['slot']}</td><td>{toks}</td><td class='num'>{slot['max_cos']:.3f}</td>"
                            f"<td>{prior_tok}</td><td>{kept}</td></tr>")
            parts.append(f"<details><summary>{escape(run)} · {escape(block)} ({label}, {len(main)} vectors)</summary>"
                         "<div class='scroll'><table><thead><tr><th>slot</th><th>nearest tokens (cosine)</th><th>max cos</th>"
                         "<th>prior's nearest</th><th>nearest kept</th></tr></thead><tbody>"
                         + "".join(rows) + "</tbody></table></div></details>")
    return "\n".join(parts)


def render_report(*, findings: list[dict], findings_columns, rows: list[dict], columns: dict, task_rows: list[dict],
                  frechet_rows: list[dict], figures: list[dict], notes: list[str], details: dict,
                  title: str = "eptk analyze") -> str:
    """The report as one HTML string (figures read from their PNG paths and embedded)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    n_runs = len(findings)
    html = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1><p class='meta'>{n_runs} run{'s' if n_runs != 1 else ''} · generated {stamp}</p>",
            "<h2>Findings</h2>",
            "<p class='meta'>Per-block values read <code>block:value</code> (<code>d13</code> = deep.13); displacement = "
            "relative L2 prior→posterior; collapsed, inside region and MMD p describe the posterior.</p>",
            _table(findings, findings_columns)]
    if notes:
        html.append("<h2>Notes</h2><ul class='notes'>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    if figures:
        html.append("<h2>Figures</h2>")
        for fig in figures:
            html.append(f"<figure><img alt='{escape(fig['title'])}' src='{png_data_uri(fig['path'])}'>"
                        f"<figcaption><b>{escape(fig['title'])}.</b> {escape(fig.get('caption', ''))}</figcaption></figure>")
    html.append("<h2>Per block (key columns)</h2>")
    html.append(_table(rows, [c for c in KEY_COLUMNS if c in columns], columns))
    html.append("<details><summary>All columns</summary>" + _table(rows, list(columns), columns) + "</details>")
    if task_rows or frechet_rows:
        html.append("<h2>Task clusters</h2>")
        if task_rows:
            html.append(_table(task_rows, list(task_rows[0].keys())))
        if frechet_rows:
            html.append("<h3>Fréchet distance between task Gaussians</h3>" + _table(frechet_rows, list(frechet_rows[0].keys())))
    neigh = _neighbours(details)
    if neigh:
        html.append("<h2>Vocabulary neighbours</h2>" + neigh)
    html.append("<h2>Columns</h2><div class='scroll'><table><thead><tr><th>column</th><th>meaning</th></tr></thead><tbody>"
                + "".join(f"<tr><td><code>{escape(k)}</code></td><td>{_inline_code(v)}</td></tr>" for k, v in columns.items())
                + "</tbody></table></div>")
    html.append("</body></html>")
    return "\n".join(html)


def write_report(path, **parts) -> Path:
    """Render the report (see render_report) and write it atomically to `path`."""
    path = Path(path)
    write_text_atomic(path, render_report(**parts))
    return path
