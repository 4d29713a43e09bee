"""The UQ report: how well each uncertainty of a potential ranks, calibrates and detects novelty.

Given an in-domain test set (structures like the training data, not trained on) and optionally
"novel" sets (configuration families absent from training), :func:`uq_metrics` computes, following
uq-methods.md section 4:

* errors: per-atom force error ||F_pred - F_DFT|| (eV/A), per-structure |dE| per atom;
* ranking: Spearman correlation of each uncertainty with the error, per atom and per structure
  (structure: maximum over its atoms of both);
* calibration: for ensembles, observed coverage of k sigma (force components against forces_std)
  versus the Gaussian expectation and the miscalibration area; for every measure, the error
  distribution per log-spaced uncertainty bin;
* novelty detection per novel set: per-atom ROC-AUC of the uncertainty separating novel atoms from
  in-domain test atoms; detection rates (novel) and false-alarm rates (in-domain) at the operating
  thresholds of each measure (gamma, gamma_local: 1 and 5; forces_dev: 0.1 and 0.5 eV/A, the monitor's
  defaults); per-structure numbers only among structures of at least ``min_structure_atoms`` atoms
  (a maximum over many atoms beats a maximum over one atom whatever the grade).

:func:`write_report` writes ``report.md`` (tables), ``metrics.json`` and PNG plots (parity,
error versus uncertainty, ROC curves; matplotlib needed for the plots).
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..atomic_io import atomic_write
from . import metrics as m
from .collect import AtomTable

#: operating thresholds per measure (flag, halt), in the measure's unit
THRESHOLDS = {"gamma": (1.0, 5.0), "gamma_local": (1.0, 5.0), "forces_dev": (0.1, 0.5)}
UNITS = {"gamma": "", "gamma_local": "", "forces_dev": "eV/A"}
MIN_STRUCTURE_ATOMS = 20


def thresholds_of(name: str):
    """(flag, halt) thresholds of a measure; variants named ``gamma...`` use gamma's."""
    if name in THRESHOLDS:
        return THRESHOLDS[name]
    if name.startswith("gamma"):
        return THRESHOLDS["gamma"]
    return (None, None)


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def ensemble_calibration(table: AtomTable) -> dict:
    """Coverage of k sigma (force components against the ensemble's forces_std), miscalibration area and
    RMS error / RMS sigma (> 1: the ensemble under-predicts its errors)."""
    e, sigma = table.force_error_components, table.forces_std
    return {
        "coverage": {str(k): v for k, v in m.gaussian_coverage(e, sigma).items()},
        "miscalibration_area": m.miscalibration_area(e, sigma),
        "rms_error_over_rms_std": float(np.sqrt(np.mean(e ** 2)) / max(np.sqrt(np.mean(sigma ** 2)), 1e-300)),
    }


def in_domain_metrics(table: AtomTable) -> dict:
    """Errors, ranking and calibration on the in-domain test set."""
    out = {
        "atoms": table.n_atoms, "structures": len(table.structure_size),
        "force_mae": float(np.mean(np.abs(table.force_error_components))) if table.n_atoms else None,
        "force_rmse": float(np.sqrt(np.mean(table.force_error_components ** 2))) if table.n_atoms else None,
        "energy_rmse_meV": float(np.sqrt(np.mean(table.energy_error ** 2)) * 1000) if len(table.energy_error) else None,
        "measures": {},
    }
    struct_err = table.per_structure_max(table.force_error)
    for name, values in table.measures.items():
        entry = {
            "spearman_atom": _finite(m.spearman(values, table.force_error)),
            "spearman_structure": _finite(m.spearman(table.per_structure_max(values), struct_err)),
            "spearman_structure_energy": _finite(m.spearman(table.per_structure_max(values), np.abs(table.energy_error))),
            "median": float(np.median(values)) if len(values) else None,
            "p99": float(np.quantile(values, 0.99)) if len(values) else None,
            "error_by_bin": m.error_by_bin(values, table.force_error, m.log_bins(values, per_decade=2)),
        }
        flag, halt = thresholds_of(name)
        if flag is not None:
            entry["false_alarm_atoms_flag"] = m.flagged_fraction(values, flag)
            entry["false_alarm_atoms_halt"] = m.flagged_fraction(values, halt)
            big = table.structure_size >= MIN_STRUCTURE_ATOMS
            smax = table.per_structure_max(values)[big]
            entry["false_alarm_structures_flag"] = _finite(m.flagged_fraction(smax, flag))
            entry["structures_ge_min_atoms"] = int(big.sum())
        out["measures"][name] = entry
    if table.forces_std is not None:
        out["ensemble_calibration"] = ensemble_calibration(table)
    return out


def novelty_metrics(test: AtomTable, novel: AtomTable) -> dict:
    """Novelty detection of ``novel`` atoms (positives) against ``test`` atoms (negatives)."""
    out = {"atoms": novel.n_atoms, "structures": len(novel.structure_size),
           "force_mae": float(np.mean(np.abs(novel.force_error_components))) if novel.n_atoms else None,
           "measures": {}}
    for name, values in novel.measures.items():
        if name not in test.measures:
            continue
        ref = test.measures[name]
        entry = {"auc_atom": m.roc_auc(ref, values),
                 "spearman_atom": _finite(m.spearman(values, novel.force_error)),
                 "median": float(np.median(values))}
        flag, halt = thresholds_of(name)
        if flag is not None:
            entry["detect_atoms_flag"] = m.flagged_fraction(values, flag)
            entry["detect_atoms_halt"] = m.flagged_fraction(values, halt)
        big_n = novel.structure_size >= MIN_STRUCTURE_ATOMS
        big_t = test.structure_size >= MIN_STRUCTURE_ATOMS
        if big_n.any() and big_t.any():
            s_novel = novel.per_structure_max(values)[big_n]
            s_test = test.per_structure_max(ref)[big_t]
            entry["auc_structure"] = m.roc_auc(s_test, s_novel)
            entry["structures_compared"] = [int(big_t.sum()), int(big_n.sum())]
            if flag is not None:
                entry["detect_structures_flag"] = m.flagged_fraction(s_novel, flag)
        out["measures"][name] = entry
    if novel.forces_std is not None and novel.n_atoms:
        out["ensemble_calibration"] = ensemble_calibration(novel)
    return out


def uq_metrics(test: AtomTable, novel: dict | None = None) -> dict:
    """All metrics: {"test": ..., "novel": {label: ...}}."""
    return {"test": in_domain_metrics(test),
            "novel": {label: novelty_metrics(test, table) for label, table in (novel or {}).items()}}


# ---- markdown -------------------------------------------------------------------------------------------

def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not math.isfinite(x):
        return "-"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def markdown(result: dict, title: str = "UQ report") -> str:
    t = result["test"]
    lines = [f"# {title}", "",
             f"In-domain test set: {t['structures']} structures, {t['atoms']} atoms; force MAE "
             f"{_fmt(t['force_mae'], 4)} eV/A, RMSE {_fmt(t['force_rmse'], 4)} eV/A; energy RMSE "
             f"{_fmt(t['energy_rmse_meV'], 2)} meV/atom.", "",
             "## Ranking and false alarms on the in-domain test set", "",
             "| measure | Spearman (atoms) | Spearman (structures, force) | Spearman (structures, energy) | median | 99th pct | "
             "false alarms (atoms, flag) | (atoms, halt) | (structures >= %d atoms, flag) |" % MIN_STRUCTURE_ATOMS,
             "|---|---|---|---|---|---|---|---|---|"]
    for name, e in t["measures"].items():
        lines.append(f"| {name} | {_fmt(e['spearman_atom'])} | {_fmt(e['spearman_structure'])} | "
                     f"{_fmt(e['spearman_structure_energy'])} | {_fmt(e['median'])} | {_fmt(e['p99'])} | "
                     f"{_fmt(e.get('false_alarm_atoms_flag'))} | {_fmt(e.get('false_alarm_atoms_halt'))} | "
                     f"{_fmt(e.get('false_alarm_structures_flag'))} |")
    flags = ", ".join(f"{k} > {v[0]:g} / {v[1]:g}" for k, v in THRESHOLDS.items())
    lines += ["", f"Thresholds (flag / halt): {flags}.", ""]
    if "ensemble_calibration" in t:
        c = t["ensemble_calibration"]
        cov = ", ".join(f"{k} sigma: {v[0]:.3f} (Gaussian {v[1]:.3f})" for k, v in c["coverage"].items())
        lines += ["## Ensemble calibration (force components)", "",
                  f"Coverage {cov}; miscalibration area {_fmt(c['miscalibration_area'])}; "
                  f"RMS error / RMS sigma = {_fmt(c['rms_error_over_rms_std'])} (> 1: the ensemble under-predicts).", ""]
    for name, e in t["measures"].items():
        lines += [f"## Force error per {name} bin (in-domain test atoms)", "",
                  "| bin | atoms | mean error (eV/A) | median | 90th pct |", "|---|---|---|---|---|"]
        for row in e["error_by_bin"]:
            if row["count"]:
                lines.append(f"| {_fmt(row['low'])} - {_fmt(row['high'])} | {row['count']} | {_fmt(row['mean'], 4)} | "
                             f"{_fmt(row['median'], 4)} | {_fmt(row['p90'], 4)} |")
        lines.append("")
    if result["novel"]:
        lines += ["## Novelty detection (novel-family atoms vs in-domain test atoms)", "",
                  "| novel set | atoms | force MAE | measure | ROC-AUC (atoms) | detected (flag) | detected (halt) | "
                  "ROC-AUC (structures >= %d atoms) | structures detected (flag) |" % MIN_STRUCTURE_ATOMS,
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, nv in result["novel"].items():
            for name, e in nv["measures"].items():
                lines.append(f"| {label} | {nv['atoms']} | {_fmt(nv['force_mae'], 4)} | {name} | {_fmt(e['auc_atom'])} | "
                             f"{_fmt(e.get('detect_atoms_flag'))} | {_fmt(e.get('detect_atoms_halt'))} | "
                             f"{_fmt(e.get('auc_structure'))} | {_fmt(e.get('detect_structures_flag'))} |")
        lines.append("")
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------------------------

def write_plots(directory, test: AtomTable, novel: dict | None = None) -> list:
    """Parity, error-versus-uncertainty and ROC plots as PNG files; returns their names (empty when
    matplotlib is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from pathlib import Path

    directory = Path(directory)
    written = []

    def save(fig, name):
        path = directory / name
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ref = test.force_reference.ravel()
    ax.plot(ref, test.force_predicted.ravel(), ".", ms=2, alpha=0.5, label="in-domain test")
    for label, table in (novel or {}).items():
        ax.plot(table.force_reference.ravel(), table.force_predicted.ravel(), ".", ms=2, alpha=0.4, label=label)
    lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set_xlabel("DFT force component (eV/A)")
    ax.set_ylabel("predicted (eV/A)")
    ax.legend(fontsize=7, markerscale=4)
    save(fig, "parity_forces.png")

    for name in test.measures:
        fig, ax = plt.subplots(figsize=(5, 4))
        sets = [("in-domain test", test)] + list((novel or {}).items())
        for label, table in sets:
            if name in table.measures:
                u = np.maximum(table.measures[name], 1e-6)
                ax.loglog(u, np.maximum(table.force_error, 1e-5), ".", ms=2, alpha=0.4, label=label)
        for thr in [t for t in thresholds_of(name) if t is not None]:
            ax.axvline(thr, color="k", lw=0.6, ls="--")
        ax.set_xlabel(f"{name} {UNITS.get(name, '')}".strip())
        ax.set_ylabel("force error ||F - F_DFT|| (eV/A)")
        ax.legend(fontsize=7, markerscale=4)
        save(fig, f"error_vs_{name}.png")

    if novel:
        measures = [n for n in test.measures if any(n in t.measures for t in novel.values())]
        if measures:
            fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 4), squeeze=False)
            for ax, name in zip(axes[0], measures):
                for label, table in novel.items():
                    if name in table.measures:
                        fpr, tpr, _ = m.roc_curve(test.measures[name], table.measures[name])
                        auc = m.roc_auc(test.measures[name], table.measures[name])
                        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.2f})")
                ax.plot([0, 1], [0, 1], "k:", lw=0.8)
                ax.set_title(name)
                ax.set_xlabel("false-alarm rate (in-domain atoms)")
                ax.set_ylabel("detection rate (novel atoms)")
                ax.legend(fontsize=7)
            save(fig, "roc_atoms.png")
    return written


def write_report(directory, test: AtomTable, novel: dict | None = None, title: str = "UQ report",
                 extra: dict | None = None) -> dict:
    """Compute the metrics and write report.md, metrics.json and the plots into ``directory``."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result = uq_metrics(test, novel)
    if extra:
        result["setup"] = extra
    plots = write_plots(directory, test, novel)
    text = markdown(result, title)
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    else:
        text += "\n(No plots: matplotlib is not installed.)\n"
    with atomic_write(directory / "report.md", "w") as fh:
        fh.write(text)
    with atomic_write(directory / "metrics.json", "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    return result
