"""The Typer app every `eptk` subcommand registers on."""
import typer

app = typer.Typer(name="eptk", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="eptk: prompt-tuning with controlled embedding priors, collapse metrics and Triton kernels.")
