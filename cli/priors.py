"""`eptk priors`: every prior family with its arguments and a one-line description."""
from .app import app


@app.command("priors")
def priors_command() -> None:
    """List the prior specs (family[:args]) that --prior accepts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from eptk.priors import PRIORS, _load_region_priors

    _load_region_priors()
    table = Table(title="priors (--prior family[:args])")
    table.add_column("spec", style="bold")
    table.add_column("needs stats")
    table.add_column("what it samples")
    for family in PRIORS.values():
        table.add_row(escape(f"{family.name}{family.args}"), "yes" if family.needs_stats else "", escape(family.description))
    Console().print(table)
