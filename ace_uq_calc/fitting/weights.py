"""Relative weights of the energy, force and stress terms of a linear fit (see :mod:`ace_uq_calc.fitting.assembly`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FitWeights:
    energy: float = 1.0
    forces: float = 0.01
    stress: float = 0.01
