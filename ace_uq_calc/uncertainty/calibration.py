"""Calibrated error estimates: a monotone map from an uncertainty (gamma, gamma_local or the
ensemble's forces_dev) to the expected force error of an atom, in eV/A.

The map is fitted on validation data (atoms the potential was not trained on, with reference
forces): the atoms are binned by uncertainty on a logarithmic grid, the root-mean-square force error
||F_pred - F_DFT|| of each bin is made non-decreasing by isotonic regression (pool-adjacent-violators,
weighted by bin counts), and the estimate is interpolated linearly in (log u, log error) between the
bin centres. Below the first bin the estimate is the first bin's value; above the last bin it
continues as a power law u^slope with the slope of a count-weighted least-squares line through
(log u, log error) of all bins, clipped at 0 (the map never decreases) and at ``MAX_TAIL_SLOPE``.
The estimate is a typical magnitude (an RMS) for atoms of that uncertainty, not a bound.

The map lives in a small JSON file of its own (pacemaker still reads the potential's ``.yaml``):

    {"format": "ace_uq_calc error calibration", "version": 1, "measure": "gamma",
     "log_u": [...], "log_error": [...], "counts": [...], "tail_slope": s, "units": "eV/A", ...}
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..atomic_io import atomic_write

FORMAT_NAME = "ace_uq_calc error calibration"
FORMAT_VERSION = 1
#: measures a calibration may be built on (names of per-atom calculator results)
MEASURES = ("gamma", "gamma_local", "forces_dev")
#: steepest power-law continuation beyond the calibrated range
MAX_TAIL_SLOPE = 2.0


def _isotonic_increasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks = []      # [mean, weight, length]
    for v, w in zip(values, weights):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([[v] * n for v, _, n in blocks])


@dataclass
class ErrorCalibration:
    """Monotone map uncertainty -> expected force error (eV/A); see the module docstring."""

    measure: str
    log_u: np.ndarray            # log10 of the bin centres (geometric means of the atoms' values)
    log_error: np.ndarray        # log10 of the isotonic RMS force error per bin, eV/A
    counts: np.ndarray           # atoms per bin
    tail_slope: float            # d log error / d log u beyond the last bin
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {self.measure!r}; expected one of {MEASURES}")
        self.log_u = np.asarray(self.log_u, dtype=float)
        self.log_error = np.asarray(self.log_error, dtype=float)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if not (len(self.log_u) == len(self.log_error) == len(self.counts) >= 1):
            raise ValueError("error calibration: log_u, log_error and counts must have the same length >= 1")
        if not (np.all(np.isfinite(self.log_u)) and np.all(np.isfinite(self.log_error))
                and math.isfinite(self.tail_slope)):
            raise ValueError("error calibration: non-finite values")
        if np.any(np.diff(self.log_u) <= 0) or np.any(np.diff(self.log_error) < 0):
            raise ValueError("error calibration: bin centres must increase and errors must not decrease")

    def predict(self, uncertainty) -> np.ndarray:
        """Expected force error (eV/A) of atoms with these uncertainty values."""
        u = np.asarray(uncertainty, dtype=float)
        tiny = 10.0 ** (self.log_u[0] - 6.0)
        lu = np.log10(np.maximum(u, tiny))
        inside = np.interp(lu, self.log_u, self.log_error)
        beyond = self.log_error[-1] + self.tail_slope * (lu - self.log_u[-1])
        return 10.0 ** np.where(lu > self.log_u[-1], beyond, inside)

    # -- file --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "measure": self.measure,
                "units": "eV/A", "log_u": self.log_u.tolist(), "log_error": self.log_error.tolist(),
                "counts": self.counts.tolist(), "tail_slope": float(self.tail_slope), "info": self.info}

    def save(self, path) -> None:
        text = json.dumps(self.to_dict(), indent=1)
        with atomic_write(path, "w") as fh:
            fh.write(text)

    @classmethod
    def load(cls, path) -> "ErrorCalibration":
        try:
            with open(path) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not an error-calibration file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: not an error-calibration file (missing format {FORMAT_NAME!r})")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: error-calibration version {data.get('version')!r} is not supported")
        try:
            return cls(measure=data["measure"], log_u=data["log_u"], log_error=data["log_error"],
                       counts=data["counts"], tail_slope=float(data["tail_slope"]), info=data.get("info", {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: malformed error-calibration file ({exc!r})") from None


def fit_error_calibration(uncertainty, force_error, measure: str, per_decade: int = 4,
                          min_count: int = 20, info: dict | None = None) -> ErrorCalibration:
    """Fit the map on validation atoms.

    uncertainty: (n,) values of ``measure`` per atom; force_error: (n,) ||F_pred - F_DFT|| in eV/A.
    Bins are 1/per_decade decades wide; bins with fewer than ``min_count`` atoms are merged into
    their neighbour (towards the bulk of the data). Atoms with non-positive uncertainty (e.g.
    isolated atoms with gamma = 0) are left out.
    """
    u = np.asarray(uncertainty, dtype=float).ravel()
    err = np.asarray(force_error, dtype=float).ravel()
    if u.shape != err.shape:
        raise ValueError(f"uncertainty ({u.shape}) and force_error ({err.shape}) differ in shape")
    keep = np.isfinite(u) & np.isfinite(err) & (u > 0)
    u, err = u[keep], err[keep]
    if len(u) < min_count:
        raise ValueError(f"error calibration needs at least {min_count} atoms with positive {measure}, got {len(u)}")
    lu = np.log10(u)
    edges = np.arange(math.floor(lu.min() * per_decade), math.ceil(lu.max() * per_decade) + 1) / per_decade
    which = np.clip(np.searchsorted(edges, lu, side="right") - 1, 0, max(len(edges) - 2, 0))
    groups = [np.flatnonzero(which == b) for b in range(max(len(edges) - 1, 1))]
    groups = [g for g in groups if len(g)]
    merged: list = []
    for g in groups:                       # merge small bins forwards ...
        if merged and len(merged[-1]) < min_count:
            merged[-1] = np.concatenate([merged[-1], g])
        else:
            merged.append(g)
    if len(merged) > 1 and len(merged[-1]) < min_count:     # ... and a small last bin backwards
        last = merged.pop()
        merged[-1] = np.concatenate([merged[-1], last])
    centres = np.array([lu[g].mean() for g in merged])
    rms = np.array([math.sqrt(float(np.mean(err[g] ** 2))) for g in merged])
    counts = np.array([len(g) for g in merged])
    floor = max(float(rms[rms > 0].min()) if np.any(rms > 0) else 1e-6, 1e-12)
    log_rms = np.log10(np.maximum(rms, floor))
    log_err = _isotonic_increasing(log_rms, counts.astype(float))
    if len(centres) > 1:
        w = counts / counts.sum()
        xm, ym = float(w @ centres), float(w @ log_rms)
        var = float(w @ (centres - xm) ** 2)
        slope = float(w @ ((centres - xm) * (log_rms - ym))) / var if var > 0 else 0.0
    else:
        slope = 0.0
    slope = min(max(slope, 0.0), MAX_TAIL_SLOPE)
    meta = {"atoms": int(len(u)), "per_decade": per_decade, "min_count": min_count}
    meta.update(info or {})
    return ErrorCalibration(measure=measure, log_u=centres, log_error=log_err, counts=counts,
                            tail_slope=slope, info=meta)
