"""Local D-optimality on tungsten: novelty detection of global gamma, plain k-means and our local method.

Run by hand from the project root (needs ../shared/data/W_uq):

    OPENBLAS_NUM_THREADS=1 python benchmarks/local_dopt_w.py [--functions 150 400] [--regime heterogeneous]
                                                          [--cache /tmp/wstudy] [--seeds 0 1 2 3 4]

Protocol (docs/local-d-optimality.md): split by structure with numpy.random.default_rng(2025).permutation(n),
the first round(0.1 n) structures held out. Heterogeneous: train on 90 % of W_PRM2020, in-domain test =
the other 10 %; novel = sphere, period-defect, non-elastic. Homogeneous: train on W_elastic + 90 % of
W_non-elastic, in-domain = the other 10 % of W_non-elastic; novel = sphere, period-defect.
A linear model is fitted on the training split (ace_uq_calc.fitting.recipe.fit, cut-off 5 A) and cached,
and all projections are cached, in --cache (a scratch folder outside the project).

Printed per method: per-atom ROC-AUC (novel atoms positive, held-out in-domain atoms negative;
Mann-Whitney statistic, ties count half) for each novel family, the detection rate at gamma > 1 and > 5,
the false-alarm rate of held-out in-domain atoms at gamma > 1 and of held-out structures with >= 20
atoms (structure flagged if any atom has gamma > 1), and for seeded methods the range over the seeds.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
from protocol import split_indices  # noqa: E402  (benchmarks/, next to this script)

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "W_uq")


def read(name):
    import ase.io

    return ase.io.read(os.path.join(SHARED, f"{name}.xyz"), ":")


def fitted_model(train, tag, functions, cache):
    from ace_uq_calc.fitting.recipe import fit
    from ace_uq_calc.model.yaml_format import write_potential_file

    path = os.path.join(cache, f"W_{tag}_{functions}.yaml")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        result = fit(train, cutoff=5.0, functions=functions)
        write_potential_file(result.potential, path)
        print(f"  fitted {path} in {time.perf_counter() - t0:.1f} s")
    return path


def projections_of(potential, frames, key, cache):
    """(projections (n_atoms, m), structure index (n_atoms,)) cached as .npy."""
    from ace_uq_calc.model.basis import load_basis
    from ace_uq_calc.uncertainty.projections import structure_projections

    path = os.path.join(cache, f"{key}.npz")
    if os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(potential):
        with np.load(path) as data:
            return data["x"], data["structure"]
    basis = load_basis(potential)
    xs, owner = [], []
    for s, atoms in enumerate(frames):
        _, x = structure_projections(basis, atoms)
        xs.append(x)
        owner.append(np.full(len(atoms), s))
    x, structure = np.concatenate(xs), np.concatenate(owner)
    np.savez(path, x=x, structure=structure)
    return x, structure


def roc_auc(positive, negative) -> float:
    """Mann-Whitney U / (n_pos n_neg), ties counted half (rank-based, O(n log n))."""
    from scipy.stats import rankdata

    scores = np.concatenate([positive, negative])
    ranks = rankdata(scores)          # average ranks: ties count half
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores(grade_fn, data):
    return {name: grade_fn(x) for name, (x, _) in data.items()}


def summarise(label, grades, data, in_domain):
    neg = grades[in_domain]
    x_struct = data[in_domain][1]
    sizes = np.bincount(x_struct)
    flagged = np.zeros(len(sizes), bool)
    np.logical_or.at(flagged, x_struct, neg > 1.0)
    big = sizes >= 20
    row = {"fa_atoms": float(np.mean(neg > 1.0)),
           "fa_structures20": float(flagged[big].mean()) if big.any() else float("nan"),
           "n_structures20": int(big.sum())}
    for name, g in grades.items():
        if name == in_domain:
            continue
        row[f"auc_{name}"] = roc_auc(g, neg)
        row[f"det1_{name}"] = float(np.mean(g > 1.0))
        row[f"det5_{name}"] = float(np.mean(g > 5.0))
    return row


def print_rows(label, rows, novel):
    keys = [f"auc_{n}" for n in novel] + ["fa_atoms", "fa_structures20"] + \
           [f"det1_{n}" for n in novel] + [f"det5_{n}" for n in novel]
    print(f"  {label}")
    for key in keys:
        values = np.array([r[key] for r in rows])
        spread = f"  (range {values.max() - values.min():.3f} over {len(values)} seeds: " \
                 f"{' '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else ""
        print(f"    {key:22s} {values.mean():.3f}{spread}")


def local_grade_fn(las):
    return lambda x: las.grades("W", x)[0]


def run(regime, functions, seeds, cache, variants):
    from ace_uq_calc.uncertainty.active_set import build_active_set_from_projections
    from ace_uq_calc.uncertainty.local_build import (
        build_local_active_set_from_projections,
    )

    print(f"== {regime} regime, fit with functions={functions}")
    if regime == "heterogeneous":
        prm = read("W_PRM2020")
        tr, ho = split_indices(len(prm))
        train = [prm[i] for i in tr]
        sets = {"in_domain": [prm[i] for i in ho], "sphere": read("W_sphere"),
                "period-defect": read("W_period-defect"), "non-elastic": read("W_non-elastic")}
    else:
        ne = read("W_non-elastic")
        tr, ho = split_indices(len(ne))
        train = read("W_elastic") + [ne[i] for i in tr]
        sets = {"in_domain": [ne[i] for i in ho], "sphere": read("W_sphere"), "period-defect": read("W_period-defect")}
    tag = regime[:3]
    pot = fitted_model(train, tag, functions, cache)
    x_train, _ = projections_of(pot, train, f"{tag}{functions}_train", cache)
    data = {name: projections_of(pot, frames, f"{tag}{functions}_{name}", cache) for name, frames in sets.items()}
    novel = [n for n in data if n != "in_domain"]
    print(f"  m = {x_train.shape[1]} functions, {x_train.shape[0]} training atoms; "
          + ", ".join(f"{n}: {len(v[0])} atoms" for n, v in data.items()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asi = build_active_set_from_projections({"W": x_train})
    g = scores(lambda x: asi.grades("W", x), data)
    print_rows("global gamma", [summarise("global", g, data, "in_domain")], novel)

    for name, options in variants.items():
        rows, t0 = [], time.perf_counter()
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                las = build_local_active_set_from_projections({"W": x_train}, seed=seed, **options)
            rows.append(summarise(name, scores(local_grade_fn(las), data), data, "in_domain"))
        cs = las.clusters["W"]
        print_rows(f"{name}: {options}  [K={cs.n_clusters}, reduced={int((cs.distance_scale > 0).sum())}, "
                   f"sizes {sorted(cs.n_train.tolist())}; {(time.perf_counter() - t0) / len(seeds):.1f} s/seed]",
                   rows, novel)


def timing(potential, asi, train_frames, structure, n_clusters=15, repeats=10, seed=0):
    """Median wall time of E+F+gamma with and without gamma_local (K clusters) on ``structure``."""
    from ace_uq_calc import ACECalculator
    from ace_uq_calc.uncertainty.local_build import build_local_active_set

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = build_local_active_set(potential, train_frames, n_clusters=n_clusters, seed=seed, n_init=3)
    results = {}
    for label, kwargs in (("E+F+gamma", {}), ("E+F+gamma+gamma_local", {"local_active_set": local})):
        calc = ACECalculator(potential, active_set=asi, skin=0.0, **kwargs)
        atoms = structure.copy()
        atoms.calc = calc
        times = []
        for k in range(repeats + 1):
            atoms.positions[0, 0] += 1e-4          # force a new calculation
            t0 = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - t0)
        results[label] = float(np.median(times[1:]))
    cs = local.clusters[local.elements[0]]
    print(f"  {os.path.basename(potential)}: {len(structure)} atoms, m = {cs.width}, K = {cs.n_clusters} "
          f"({int((cs.distance_scale > 0).sum())} reduced): " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in results.items())
          + f"; gamma_local adds {100 * (results['E+F+gamma+gamma_local'] / results['E+F+gamma'] - 1):.1f} %")


def benchmark():
    import ase.io
    from ase.build import bulk

    fixtures = os.path.join(os.path.dirname(SHARED), "..", "fixtures", "pacemaker")
    print("== timing (median of 10 calls, skin 0, Numba threads:", os.environ.get("NUMBA_NUM_THREADS", "all"), ")")
    w_train = read("W_non-elastic")[::3] + read("W_PRM2020")
    w = bulk("W", "bcc", a=3.17, cubic=True).repeat(8)
    w.rattle(0.05, seed=1)
    timing(os.path.join(fixtures, "W_defect.yaml"), os.path.join(fixtures, "W_defect.asi"), w_train, w)
    cu_train = ase.io.read(os.path.join(os.path.dirname(SHARED), "zuo2020", "Cu_train.xyz"), ":")
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(6)
    cu.rattle(0.05, seed=1)
    timing(os.path.join(fixtures, "Cu_fs500.yaml"), os.path.join(fixtures, "Cu_fs500.asi"), cu_train, cu)


BASELINE = dict(n_clusters=15, pca_variance=1.0, n_init=1)
OURS_K15 = dict(n_clusters=15, pca_variance=0.99, n_init=20)
OURS_AUTO = dict(n_clusters="auto", pca_variance=0.99, n_init=20)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, nargs="+", default=[150, 400])
    parser.add_argument("--regime", choices=["heterogeneous", "homogeneous"], nargs="+", default=["heterogeneous"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--benchmark", action="store_true", help="only the timing of gamma_local (W_defect, Cu_fs500)")
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "wstudy"))
    args = parser.parse_args(argv)
    if args.benchmark:
        return benchmark()
    os.makedirs(args.cache, exist_ok=True)
    variants = {"plain k-means baseline": BASELINE, "ours, K=15": OURS_K15, "ours, automatic K": OURS_AUTO}
    for regime in args.regime:
        for functions in args.functions:
            run(regime, functions, args.seeds, args.cache, variants)


if __name__ == "__main__":
    main()
