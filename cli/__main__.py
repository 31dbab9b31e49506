"""`python -m eptk.cli ...` (and `torchrun -m eptk.cli tune ...`)."""
import sys

from .main import main

sys.exit(main())
