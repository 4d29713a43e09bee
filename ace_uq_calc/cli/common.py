"""What several sub-commands share: the ``--num-threads`` option and reading structure files."""
from __future__ import annotations

import ase.io


def add_threads_option(parser) -> None:
    """``--num-threads N``: Numba threads of the calculator (``ACECalculator(num_threads=N)``)."""
    parser.add_argument("--num-threads", type=int, default=None, metavar="N",
                        help="Numba threads for the evaluation (default: all cores, or NUMBA_NUM_THREADS)")


def read_structures(paths) -> list:
    """All frames of all files in ``paths`` (any format ASE reads), in order."""
    return [atoms for path in paths for atoms in ase.io.read(path, index=":")]
