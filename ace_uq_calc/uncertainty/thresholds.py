"""Flag and halt thresholds of the extrapolation grade from the in-domain distribution of grades.

When an active set is built (:func:`ace_uq_calc.uncertainty.build.build_active_set`), a part of the
training structures (10 % by default, chosen by structure) is held out of a first active set and graded
against it: their per-atom grades are what new in-domain environments look like. The monitor flags a
structure when its largest per-atom grade exceeds a threshold, and a structure of N atoms has N chances:
with per-atom exceedance probability P(gamma > t) = S(t) and atoms taken as independent,

    P(structure flagged) = 1 - (1 - S(t))^N,

so the threshold for a target rate R is the per-atom quantile S(t) = 1 - (1 - R)^(1/N), which grows with
N (:meth:`GradeDistribution.thresholds`; flag: R = 1 %, halt: R = 0.1 %). Atoms of one structure are
correlated in practice, which makes the maximum less extreme than for independent atoms: the thresholds
err on the side of fewer false alarms. Large N reaches beyond the held-out sample (1 / (R / N) atoms would
be needed), so above the k largest grades of the sample S(t) continues as a Pareto tail
S(t) = S(u) (t / u)^-alpha, alpha estimated by Hill's maximum-likelihood estimator from the grades above
u. The tail starts at the (k+1)-th largest of n grades, k = 2 sqrt(n) (at least 20, at most n / 10).
The flag threshold is at least 1 (grades <= 1 interpolate by construction) and the halt threshold at
least the flag threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the Pareto tail is fitted to the largest k = TAIL_COUNT_FACTOR sqrt(n) of n held-out grades (at least
#: MIN_TAIL_COUNT, at most a tenth): far enough out for the tail's asymptotic form, with enough points for
#: Hill's estimator (its relative standard error is 1 / sqrt(k))
TAIL_COUNT_FACTOR = 2.0
MIN_TAIL_COUNT = 20

#: at most this many held-out grades are stored (an evenly spaced subsample of the sorted grades)
MAX_STORED_GRADES = 20_000

#: target fractions of in-domain structures flagged and halted by the default thresholds
FLAG_RATE = 0.01
HALT_RATE = 0.001

#: the grade below which nothing is flagged: grades <= 1 interpolate within the active set
MIN_FLAG_THRESHOLD = 1.0


@dataclass
class GradeDistribution:
    """Per-atom extrapolation grades of held-out in-domain atoms and the tail model fitted to them."""

    grades: np.ndarray        # (k,) sorted held-out per-atom grades (a subsample when there were more)
    n_atoms: int              # held-out atoms graded
    n_structures: int         # held-out structures
    tail_start: float         # u, where the Pareto tail starts (see the module docstring)
    tail_probability: float   # S(u), the fraction of held-out atoms above u
    tail_index: float         # alpha of the Pareto tail (inf: no tail, all grades equal)

    def __post_init__(self):
        self.grades = np.sort(np.asarray(self.grades, dtype=np.float64))
        if self.grades.size == 0 or not np.all(np.isfinite(self.grades)) or self.grades[0] < 0:
            raise ValueError("a grade distribution needs finite, non-negative grades")

    @classmethod
    def from_grades(cls, grades, n_structures: int) -> "GradeDistribution":
        """The distribution of held-out per-atom ``grades`` (any order) from ``n_structures`` structures."""
        values = np.sort(np.asarray(grades, dtype=np.float64).ravel())
        if values.size < 10:
            raise ValueError(f"{values.size} held-out atoms are too few to estimate a grade distribution "
                             "(at least 10 are needed)")
        count = int(min(values.size // 10, max(MIN_TAIL_COUNT, TAIL_COUNT_FACTOR * np.sqrt(values.size))))
        u = float(values[values.size - count - 1])
        above = values[values > u]
        probability = above.size / values.size
        logs = np.log(above / u) if u > 0 else np.zeros(0)
        alpha = above.size / float(logs.sum()) if above.size and logs.sum() > 0 else np.inf
        stored = values
        if values.size > MAX_STORED_GRADES:
            stored = values[np.linspace(0, values.size - 1, MAX_STORED_GRADES).round().astype(int)]
        return cls(grades=stored, n_atoms=int(values.size), n_structures=int(n_structures), tail_start=u,
                   tail_probability=float(probability), tail_index=float(alpha))

    def survival(self, t) -> np.ndarray:
        """S(t) = P(per-atom grade > t): the empirical fraction up to ``tail_start``, the Pareto tail above."""
        t = np.asarray(t, dtype=np.float64)
        empirical = 1.0 - np.searchsorted(self.grades, t, side="right") / self.grades.size
        tail = self.tail_probability * (np.maximum(t, self.tail_start) / self.tail_start) ** (-self.tail_index) \
            if self.tail_start > 0 else np.zeros_like(t)
        return np.where(t <= self.tail_start, empirical, tail)

    def quantile(self, exceedance: float) -> float:
        """The grade t with S(t) = ``exceedance`` (per-atom probability of a larger grade)."""
        if not 0.0 < exceedance < 1.0:
            raise ValueError(f"an exceedance probability must lie in (0, 1), got {exceedance}")
        if exceedance >= self.tail_probability or not np.isfinite(self.tail_index) or self.tail_start <= 0:
            return float(np.quantile(self.grades, 1.0 - exceedance))
        return float(self.tail_start * (exceedance / self.tail_probability) ** (-1.0 / self.tail_index))

    def threshold(self, n_atoms: int, rate: float) -> float:
        """The grade that the largest of ``n_atoms`` independent in-domain atoms exceeds with probability
        ``rate``."""
        if n_atoms < 1:
            raise ValueError(f"a structure needs at least one atom, got {n_atoms}")
        return self.quantile(-np.expm1(np.log1p(-rate) / n_atoms))

    def thresholds(self, n_atoms: int, flag_rate: float = FLAG_RATE, halt_rate: float = HALT_RATE):
        """(flag, halt) thresholds for a structure of ``n_atoms`` atoms: about ``flag_rate`` of in-domain
        structures flagged and ``halt_rate`` halted (module docstring)."""
        flag = max(MIN_FLAG_THRESHOLD, self.threshold(n_atoms, flag_rate))
        halt = max(flag, self.threshold(n_atoms, halt_rate))
        return flag, halt

    def to_arrays(self, prefix: str = "") -> dict:
        """The distribution as named arrays (for an ``.npz`` file)."""
        return {f"{prefix}grades": self.grades, f"{prefix}n_atoms": np.array(self.n_atoms),
                f"{prefix}n_structures": np.array(self.n_structures), f"{prefix}tail_start": np.array(self.tail_start),
                f"{prefix}tail_probability": np.array(self.tail_probability),
                f"{prefix}tail_index": np.array(self.tail_index)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "GradeDistribution":
        return cls(grades=np.asarray(arrays[f"{prefix}grades"]), n_atoms=int(arrays[f"{prefix}n_atoms"]),
                   n_structures=int(arrays[f"{prefix}n_structures"]),
                   tail_start=float(arrays[f"{prefix}tail_start"]),
                   tail_probability=float(arrays[f"{prefix}tail_probability"]),
                   tail_index=float(arrays[f"{prefix}tail_index"]))
