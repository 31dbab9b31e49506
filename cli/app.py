"""The Typer app every `eptk` subcommand registers on."""
import typer

# Help of the options every model-loading command shares.
DEVICE_HELP = "auto (CUDA when present, else the CPU), cpu, cuda, cuda:N"
DEVICE_MAP_HELP = ("spread one frozen model over devices (accelerate): auto or balanced (even over the visible "
                   "GPUs), sequential (fill GPU 0 first) or a FILE.json mapping module names to devices (GPU "
                   "index, cuda:N, \"cpu\", \"disk\"); only the prompt is moved; single process only")
OFFLOAD_HELP = "folder for the weights a --device-map puts on \"disk\""

app = typer.Typer(name="eptk", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="eptk: prompt-tuning with controlled embedding priors, collapse metrics and Triton kernels.")
