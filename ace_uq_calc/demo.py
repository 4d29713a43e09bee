"""The bundled example: a small Cu model (``data/Cu_example.yaml``) and its active set
(``data/Cu_example.asi``); ``ace-uq demo`` (:mod:`ace_uq_calc.cli.demo`) runs it."""
from __future__ import annotations

from importlib import resources


def example_files():
    """Paths of the bundled example potential and active set."""
    base = resources.files("ace_uq_calc") / "data"
    return str(base / "Cu_example.yaml"), str(base / "Cu_example.asi")
