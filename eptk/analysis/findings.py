"""The findings table: one display row per run (score, displacement, collapse, position against the data),
shared by the terminal and report.html."""
from __future__ import annotations

from .columns import num


def _fmt(x, digits: int = 3) -> str:
    x = num(x)
    if x is None:
        return "–"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 10 ** -digits):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def _per_block(rows: list[dict], key: str, only_layer0: bool = False) -> str:
    vals = [(r["block"], r.get(key)) for r in rows if r.get("block") and (not only_layer0 or r["space"] == "embedding")]
    vals = [(b, v) for b, v in vals if num(v) is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return _fmt(vals[0][1])
    return " ".join(f"{b.replace('prefix.', 'p').replace('deep.', 'd')}:{_fmt(v, 2)}" for b, v in vals)


def _layers_text(rows: list[dict]) -> str:
    """Prompted layers as compact ranges: '0,13-15'."""
    layers = sorted({r["layer"] for r in rows if r.get("layer") is not None})
    if not layers:
        return "–"
    spans = [[layers[0], layers[0]]]
    for layer in layers[1:]:
        if layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


FINDINGS_COLUMNS = ("run", "status", "method", "prior", "layers", "tuned", "baseline", "displacement",
                    "collapsed", "inside region", "MMD p")


def findings(rows: list[dict]) -> list[dict]:
    """One display row per run: FINDINGS_COLUMNS, formatted. Per-block values read `block:value`
    (`d13` = deep.13, `p3.key` = prefix.3.key); displacement is the relative L2 of the posterior,
    collapsed / inside region / MMD p describe the posterior (the prior when there is none yet)."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    out = []
    for name, rs in by_run.items():
        first = rs[0]
        has_post = any(num(r.get("post_norm_mean")) is not None for r in rs)
        which = "post" if has_post else "prior"
        out.append({
            "run": name, "status": first["status"], "method": str(first.get("method") or "–"),
            "prior": str(first.get("prior") or "–"), "layers": _layers_text(rs),
            "tuned": _fmt(first.get("tuned_score")),
            "baseline": _fmt(first.get("baseline_score")),
            "displacement": _per_block(rs, "disp_l2_rel"),
            "collapsed": _per_block(rs, f"{which}_collapsed_share", only_layer0=True),
            "inside region": _per_block(rs, f"{which}_inside_share"),
            "MMD p": _per_block(rs, f"{which}_mmd_p"),
        })
    return out


def print_findings(table_rows: list[dict], console=None) -> None:
    from rich.table import Table

    console = console or wide_console()
    table = Table(title="eptk analyze: findings", header_style="bold")
    for col in FINDINGS_COLUMNS:
        table.add_column(col, overflow="fold", justify="right" if col in ("tuned", "baseline") else "left")
    for r in table_rows:
        table.add_row(*(r[c] for c in FINDINGS_COLUMNS))
    console.print(table)


def wide_console():
    """A rich console at least 140 columns wide: the findings table has 11 columns."""
    from rich.console import Console
    return Console(width=max(Console().width, 140))
