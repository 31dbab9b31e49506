"""`eptk priors`: every prior family with its arguments and a one-line description."""
from .app import app


@app.command("priors")
def priors_command() -> None:
    """List the prior specs (family[:args]) that --prior accepts."""
    from eptk import commands

    commands.priors()
