#!/usr/bin/env python
"""The tungsten UQ study (uq-methods.md; Shuang et al., arXiv 2508.03405) reproduced with ace_uq_calc.

One command, from the project root, writes docs/uq-study.md (and its plots in docs/uq-study/):

    OPENBLAS_NUM_THREADS=1 python benchmarks/uq_study.py --output docs/uq-study.md

(about 15-30 minutes on 2 cores; fitted models, ensembles and projections are cached in --work,
default $TMPDIR/ace_uq_study, so a re-run only recomputes the statistics).

Protocol. Data ../shared/data/W_uq. Every split is by structure with
numpy.random.default_rng(2025).permutation(n), the first round(0.1 n) structures held out.
* homogeneous training: W_elastic + 90 % of W_non-elastic; in-domain test: the other 10 % of
  W_non-elastic; novel families: W_period-defect, W_sphere.
* heterogeneous training: 90 % of W_PRM2020; in-domain test: the other 10 %; novel families:
  W_period-defect, W_sphere, W_non-elastic.
For each regime and each model size: a linear ACE fitted on the training split only (the default
recipe at cut-off 5 A with a small and a larger basis), an ensemble of K members sampled from the
bootstrap of its training structures (K refits, shared basis), the global active set (MaxVol) of the training atoms, the local active sets
(clustering-enhanced local D-optimality, ace_uq_calc.uncertainty.local_build, seeds 0-4) and the plain
k-means baseline (K = 15 on standardised projections, seeds 0-4). Uncertainties: ensemble forces_dev
(max_k ||F_k - F_mean||, eV/A), gamma, gamma_local. Metrics (ace_uq_calc.report): per-atom force error
||F - F_DFT||, Spearman correlations, ensemble coverage, error per gamma bin, per-atom ROC-AUC of
novel-family atoms against in-domain test atoms, detection and false-alarm rates at gamma > 1 and > 5.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
from protocol import split_indices  # noqa: E402  (benchmarks/, next to this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "W_uq")
SEEDS = (0, 1, 2, 3, 4)
CUTOFF = 5.0


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def read(name):
    import ase.io

    return ase.io.read(os.path.join(DATA, f"{name}.xyz"), ":")


def regime_data(regime: str):
    """(training frames, {"in-domain": frames, novel family: frames, ...})."""
    if regime == "heterogeneous":
        prm = read("W_PRM2020")
        tr, ho = split_indices(len(prm))
        return [prm[i] for i in tr], {"in-domain": [prm[i] for i in ho], "period-defect": read("W_period-defect"),
                                      "sphere": read("W_sphere"), "non-elastic": read("W_non-elastic")}
    ne = read("W_non-elastic")
    tr, ho = split_indices(len(ne))
    return read("W_elastic") + [ne[i] for i in tr], {"in-domain": [ne[i] for i in ho],
                                                    "period-defect": read("W_period-defect"),
                                                    "sphere": read("W_sphere")}


# ---- models ------------------------------------------------------------------------------------------------

def fitted_model(train, tag: str, functions: int, ensemble: int, work: str) -> dict:
    """Fit (or load from the cache) the model and its bootstrap ensemble; returns paths and fit facts."""
    from ace_uq_calc.fitting.recipe import fit
    from ace_uq_calc.model.yaml_format import write_potential_file

    base = os.path.join(work, f"W_{tag}_{functions}")
    info_path = base + ".json"
    if os.path.exists(info_path):
        with open(info_path) as fh:
            return json.load(fh)
    from ace_uq_calc.fitting.ensemble_fit import ensemble_potentials
    from ace_uq_calc.fitting.recipe import DEFAULT_WEIGHTS
    from ace_uq_calc.model.basis import build_basis

    t0 = time.perf_counter()
    result = fit(train, cutoff=CUTOFF, functions=functions)
    fit_time = time.perf_counter() - t0
    write_potential_file(result.potential, base + ".yaml")
    t0 = time.perf_counter()
    members = ensemble_potentials(build_basis(result.potential), result, "bootstrap", ensemble, frames=train,
                                  weights=DEFAULT_WEIGHTS, seed=0)
    ensemble_time = time.perf_counter() - t0
    paths = []
    for k, member in enumerate(members):
        path = f"{base}.member{k:02d}.yaml"
        write_potential_file(member, path)
        paths.append(path)
    members = paths
    from ace_uq_calc.model.basis import load_basis

    info = {"potential": base + ".yaml", "members": members, "fit_time": fit_time, "ensemble_time": ensemble_time,
            "functions": int(load_basis(base + ".yaml").nfunc["W"]), "ridge": float(result.regularisation)}
    with open(info_path, "w") as fh:
        json.dump(info, fh)
    return info


def projections(potential: str, frames, key: str, work: str) -> np.ndarray:
    """Per-atom linear B-projections (n_atoms, m) in frame order (cached)."""
    from ace_uq_calc.model.basis import load_basis
    from ace_uq_calc.uncertainty.projections import structure_projections

    path = os.path.join(work, f"{key}.npy")
    if os.path.exists(path):
        return np.load(path)
    basis = load_basis(potential)
    x = np.concatenate([structure_projections(basis, atoms)[1] for atoms in frames])
    np.save(path, x)
    return x


def tables(info: dict, sets: dict, key: str, work: str) -> dict:
    """AtomTable per data set: errors of the ensemble mean, forces_dev and forces_std (cached as npz)."""
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.report.collect import AtomTable, collect

    out = {}
    calc = None
    for name, frames in sets.items():
        path = os.path.join(work, f"{key}_{name}_table.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as z:
                out[name] = AtomTable(
                    structure=z["structure"], structure_size=z["structure_size"], config_type=list(z["config_type"]),
                    force_error=z["force_error"], force_error_components=z["force_error_components"],
                    force_reference=z["force_reference"], force_predicted=z["force_predicted"],
                    energy_error=z["energy_error"], measures={"forces_dev": z["forces_dev"]},
                    forces_std=z["forces_std"], energy_std=z["energy_std"])
            continue
        if calc is None:
            calc = ACECalculator(info["members"])
        t0 = time.perf_counter()
        table = collect(calc, frames)
        log(f"    evaluated {name}: {table.n_atoms} atoms in {time.perf_counter() - t0:.0f} s")
        np.savez(path, structure=table.structure, structure_size=table.structure_size,
                 config_type=np.array(table.config_type, dtype=str), force_error=table.force_error,
                 force_error_components=table.force_error_components, force_reference=table.force_reference,
                 force_predicted=table.force_predicted, energy_error=table.energy_error,
                 forces_dev=table.measures["forces_dev"], forces_std=table.forces_std, energy_std=table.energy_std)
        out[name] = table
    return out


# ---- one regime x size ---------------------------------------------------------------------------------------

BASELINE = dict(n_clusters=15, pca_variance=1.0, n_init=1)      # plain k-means on standardised projections


def study_case(regime: str, functions: int, ensemble: int, work: str, seeds=SEEDS) -> dict:
    from ace_uq_calc.report.uq_report import uq_metrics
    from ace_uq_calc.uncertainty.active_set import build_active_set_from_projections
    from ace_uq_calc.uncertainty.local_build import (
        build_local_active_set_from_projections,
    )

    tag = regime[:3]
    log(f"== {regime}, functions={functions}")
    train, sets = regime_data(regime)
    info = fitted_model(train, tag, functions, ensemble, work)
    m = info["functions"]
    log(f"    model: {m} functions, fit {info['fit_time']:.0f} s")
    x_train = projections(info["potential"], train, f"{tag}{functions}_train", work)
    x = {name: projections(info["potential"], frames, f"{tag}{functions}_{name}", work) for name, frames in sets.items()}
    tab = tables(info, sets, f"{tag}{functions}", work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        global_set = build_active_set_from_projections({"W": x_train})
    for name in sets:
        tab[name].measures["gamma"] = global_set.grades("W", x[name])
    seed_results = {}
    for variant, options in (("gamma_local", {}), ("gamma_kmeans15", BASELINE)):
        per_seed = []
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                local = build_local_active_set_from_projections({"W": x_train}, seed=seed, **options)
            grades = {name: local.grades("W", x[name])[0] for name in sets}
            per_seed.append(uq_metrics(_with(tab["in-domain"], variant, grades["in-domain"]),
                                       {n: _with(tab[n], variant, grades[n]) for n in sets if n != "in-domain"}))
            if seed == seeds[0]:
                for name in sets:
                    tab[name].measures[variant] = grades[name]
                cluster_count = local.clusters["W"].n_clusters
        seed_results[variant] = {"per_seed": per_seed, "clusters": cluster_count}
    novel = {n: tab[n] for n in sets if n != "in-domain"}
    result = uq_metrics(tab["in-domain"], novel)
    result["calibration"] = calibration_study(tab)
    result["seeds"] = seed_results
    result["model"] = {"functions": m, "fit_time": info["fit_time"], "ensemble": len(info["members"]),
                       "train_structures": len(train), "train_atoms": int(sum(len(a) for a in train)),
                       "condition_number": float(global_set.condition_numbers.get("W", float("nan")))}
    return result


def _with(table, name, values):
    """A shallow copy of ``table`` whose only measure is ``name``."""
    from dataclasses import replace

    return replace(table, measures={name: values})


def calibration_study(tab: dict) -> dict:
    """Errors predicted by each uncertainty after calibration on half of the in-domain test structures
    (ace_uq_calc.uncertainty.calibration), judged on the other half and on the novel families:
    median of predicted / observed error, and the fraction of atoms whose error exceeds twice the
    prediction (under-prediction). The raw ensemble forces_dev is judged the same way."""
    from ace_uq_calc.uncertainty.calibration import fit_error_calibration

    ind = tab["in-domain"]
    n_struct = len(ind.structure_size)
    order = np.random.default_rng(7).permutation(n_struct)
    fit_structs = np.zeros(n_struct, bool)
    fit_structs[order[: n_struct // 2]] = True
    fit_atoms = fit_structs[ind.structure]
    out = {}
    for measure in ("forces_dev", "gamma", "gamma_local"):
        if measure not in ind.measures:
            continue
        cal = fit_error_calibration(ind.measures[measure][fit_atoms], ind.force_error[fit_atoms],
                                    "gamma_local" if measure.startswith("gamma_local") else measure)
        entry = {}
        for name, table in tab.items():
            sel = ~fit_atoms if name == "in-domain" else slice(None)
            predicted = cal.predict(table.measures[measure][sel])
            observed = table.force_error[sel]
            entry[name] = {"median_ratio": float(np.median(predicted / np.maximum(observed, 1e-6))),
                           "under_2x": float(np.mean(observed > 2 * predicted)),
                           "mean_predicted": float(np.mean(predicted)), "mean_observed": float(np.mean(observed))}
            if measure == "forces_dev":
                raw = table.measures["forces_dev"][sel]
                entry[name]["raw_median_ratio"] = float(np.median(raw / np.maximum(observed, 1e-6)))
                entry[name]["raw_under_2x"] = float(np.mean(observed > 2 * raw))
        out[measure] = entry
    return out


# ---- document ------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--functions", type=int, nargs="+", default=[150, 400],
                   help="basis sizes requested from the fitting recipe (functions per element before pruning)")
    p.add_argument("--ensemble", type=int, default=6, help="ensemble members (bootstrap refits)")
    p.add_argument("--homogeneous-seeds", type=int, default=1,
                   help="clustering seeds for the homogeneous regime (the heterogeneous one always uses 0-4)")
    p.add_argument("--regimes", nargs="+", default=["homogeneous", "heterogeneous"])
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ace_uq_study"))
    p.add_argument("--output", default=os.path.join(ROOT, "docs", "uq-study.md"))
    p.add_argument("--json", default=None, help="also write all numbers as JSON")
    p.add_argument("--from-json", default=None,
                   help="only rewrite the document from the numbers of an earlier run's --json file")
    args = p.parse_args(argv)
    if args.from_json:
        from uq_study_doc import write_document

        with open(args.from_json) as fh:
            saved = json.load(fh)
        write_document(saved["results"], args, saved["elapsed"])
        log(f"wrote {args.output} from {args.from_json}")
        return
    os.makedirs(args.work, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    for regime in args.regimes:
        for functions in args.functions:
            seeds = SEEDS if regime == "heterogeneous" else SEEDS[: args.homogeneous_seeds]
            results[f"{regime}/{functions}"] = study_case(regime, functions, args.ensemble, args.work, seeds)
    elapsed = time.perf_counter() - t0
    from uq_study_doc import write_document  # noqa: E402  (next to this script)

    write_document(results, args, elapsed)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "elapsed": elapsed}, fh, indent=1, default=float)
    log(f"done in {elapsed:.0f} s; wrote {args.output}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
