"""Ensembles of linear ACE fits: K coefficient vectors on the basis of one fit.

Two methods (``ace-uq fit --ensemble K --ensemble-method ...``):

* ``posterior`` (default): K draws from the Gaussian posterior N(c_hat, a^2 s^2 H^-1) of the ridge fit
  (:func:`ace_uq_calc.fitting.posterior.posterior_samples`), H the regularised normal matrix of the
  final fit and s^2 = SSE / (rows - columns) the residual variance. The posterior alone is only the
  statistical uncertainty of the coefficients, far narrower than the error of a finite basis; a is the
  factor that makes the posterior of the training-split fit predict the squared error of the
  validation split (``FitResult.posterior_scale``, from normal equations only). Deviations are drawn
  in pairs of opposite sign, so the members' mean is exactly the fit. It reuses the normal equations
  of the fit, so it costs two eigen-decompositions / solves (seconds).
* ``bootstrap``: K refits on structures resampled with replacement. The normal equations are
  assembled once per block of consecutive structures (a second assembly pass over the data) and
  recombined with multinomial bootstrap weights, so the K refits cost K linear solves. Blocks are single
  structures unless the per-block normal matrices would exceed :data:`BOOTSTRAP_MEMORY` bytes; then
  blocks of consecutive structures are resampled (a block bootstrap). The ridge strength is the one the fit chose.

All members share the basis of the fit (only the coefficients and reference energies differ), so an
ensemble calculator evaluates them in one descriptor pass. Files written by :func:`write_ensemble`:
``OUT.yaml`` the mean / best fit (unchanged), ``OUT.ensemble/member_00.yaml`` ... (pacemaker B-basis
files) and ``OUT.ensemble/ensemble.yaml`` listing them (an ensemble file, see
:mod:`ace_uq_calc.model.ensemble_file`), each written atomically.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..model.basis import ACEBasis
from ..model.ensemble_file import write_ensemble_file
from ..model.yaml_format import write_potential_file
from ..progress import progress_bar
from .assembly import NormalEquations, assemble_chunk, row_norms
from .linear_fit import FitResult, fitted_potential, solve_ridge
from .posterior import posterior_samples

METHODS = ("posterior", "bootstrap")
DEFAULT_METHOD = "posterior"

#: upper bound (bytes) on the per-block normal matrices kept for the bootstrap
BOOTSTRAP_MEMORY = 2**30


def posterior_members(basis: ACEBasis, result: FitResult, count: int, seed: int = 0,
                      calibrated: bool = True) -> list:
    """``count`` coefficient vectors (m + n_elements each, E0 columns last) drawn from the posterior of
    the ridge fit ``result`` (which must carry its normal equations), widened by
    ``result.posterior_scale`` (the factor that makes the spread match the validation error) unless
    ``calibrated`` is False. The deviations come in pairs of opposite sign (antithetic sampling), so the
    members' mean is the fit itself."""
    eq = result.normal_equations
    if eq is None:
        raise ValueError("the fit result carries no normal equations (fit with ace_uq_calc.fitting.fit_linear)")
    m = int(basis.function_start[-1])
    scale = result.posterior_scale if calibrated else 1.0
    if calibrated and not result.n_validation:
        warnings.warn("the fit had no validation split (fewer than 10 structures): the posterior members are not "
                      "widened and their spread underestimates the error", RuntimeWarning, stacklevel=2)
    samples = posterior_samples(eq.ata, eq.atb, eq.btb, eq.rows, result.regularisation, m, count, seed=seed,
                                e0_ridge=result.e0_ridge, scale=scale, antithetic=True)
    return [samples[k] for k in range(count)]


def _blocks(n_frames: int, ncols: int) -> list:
    """Index ranges of consecutive structures, as many as memory allows (at most one per structure)."""
    per_block = 8.0 * ncols * ncols
    n_blocks = int(max(1, min(n_frames, BOOTSTRAP_MEMORY // per_block)))
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def bootstrap_members(basis: ACEBasis, result: FitResult, frames, weights, count: int, seed: int = 0,
                      progress: bool = False) -> list:
    """``count`` coefficient vectors from ridge refits (strength ``result.regularisation``) on bootstrap
    resamples of ``frames`` (the structures the fit used, same weights)."""
    frames = [a for a in frames if len(a) > 0]
    m = int(basis.function_start[-1])
    ncols = m + basis.n_elements
    norms = row_norms(frames, weights)
    blocks = _blocks(len(frames), ncols)
    parts = []
    with progress_bar(len(blocks), "bootstrap: assembling", progress, unit="block") as bar:
        for lo, hi in blocks:
            parts.append(assemble_chunk(basis, frames[lo:hi], weights, norms, result.fixed_e0, result.e0_offset))
            bar.update(1)
    rng = np.random.default_rng(seed)
    members = []
    for _ in range(count):
        draws = np.bincount(rng.integers(0, len(blocks), size=len(blocks)), minlength=len(blocks))
        eq = NormalEquations.empty(ncols)
        for w, part in zip(draws.tolist(), parts):
            if w:
                eq.ata += w * part.ata
                eq.atb += w * part.atb
                eq.btb += w * part.btb
                eq.rows += w * part.rows
        members.append(solve_ridge(eq, result.regularisation, m, result.e0_ridge))
    return members


def ensemble_potentials(basis: ACEBasis, result: FitResult, method: str, count: int, frames=None, weights=None,
                        seed: int = 0, progress: bool = False) -> list:
    """K member potentials (PotentialFile) of the fit ``result`` on ``basis`` (see module docstring);
    ``frames`` (the training structures) are needed by the bootstrap, ``weights`` default to the fit's."""
    if method not in METHODS:
        raise ValueError(f"unknown ensemble method {method!r}: choose one of {', '.join(METHODS)}")
    if int(count) != count or count < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {count!r}")
    if method == "posterior":
        coefs = posterior_members(basis, result, int(count), seed=seed)
    else:
        weights = weights if weights is not None else result.weights
        if frames is None or weights is None:
            raise ValueError("the bootstrap needs the training frames and fit weights")
        coefs = bootstrap_members(basis, result, frames, weights, int(count), seed=seed, progress=progress)
    out = []
    for k, coef in enumerate(coefs):
        pot, _ = fitted_potential(basis, coef, result.e0_offset, result.fixed_e0)
        pot.metadata = dict(pot.metadata, ensemble_method=method, ensemble_member=str(k))
        if method == "posterior":
            pot.metadata["posterior_scale"] = repr(float(result.posterior_scale))
        out.append(pot)
    return out


def ensemble_paths(output) -> tuple:
    """(member directory, ensemble file) of the main potential path ``output``: OUT.yaml ->
    (OUT.ensemble, OUT.ensemble/ensemble.yaml)."""
    output = os.fspath(output)
    stem = output[:-5] if output.endswith(".yaml") else output
    directory = stem + ".ensemble"
    return directory, os.path.join(directory, "ensemble.yaml")


def write_ensemble(members: list, output) -> tuple:
    """Write members as ``OUT.ensemble/member_NN.yaml`` and the ensemble file ``OUT.ensemble/ensemble.yaml``
    (atomically, file by file; the ensemble file last). Returns (member paths, ensemble file path)."""
    directory, ensemble_file = ensemble_paths(output)
    os.makedirs(directory, exist_ok=True)
    width = max(2, len(str(len(members) - 1)))
    paths = []
    for k, pot in enumerate(members):
        path = os.path.join(directory, f"member_{k:0{width}d}.yaml")
        write_potential_file(pot, path)
        paths.append(path)
    write_ensemble_file(ensemble_file, paths)
    return paths, ensemble_file


__all__ = ["METHODS", "DEFAULT_METHOD", "ensemble_potentials", "write_ensemble", "ensemble_paths",
           "posterior_members", "bootstrap_members"]
