"""``python -m ace_uq_calc.cli``: the same as ``ace-uq``."""
import sys

from . import main

sys.exit(main())
