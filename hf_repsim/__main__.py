"""``python -m hf_repsim`` (and ``accelerate launch -m hf_repsim``) runs the command line."""

import sys

from hf_repsim.cli import main

sys.exit(main())
