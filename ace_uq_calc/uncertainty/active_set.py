"""The active set of a potential (D-optimality): the ``.asi`` file, its companion file, the grades.

Spec: pacemaker-format.md section 10, uq-methods.md section 1.

* The projections of all training atoms of one element form a tall matrix X (n, m). The active set holds
  the rows of (locally) maximal volume, selected by MaxVol after one rank decision on all the data
  (:mod:`ace_uq_calc.uncertainty.subspace_selection`); every training row then has coefficients
  <= tolerance in the active rows.
* The ``.asi`` file is pacemaker's: per element the (m, m) inverse active set ASI, so that pyace and
  LAMMPS ``pair_style pace/extrapolation`` read it and compute gamma = max_j |(x ASI)_j|. When the training
  data span only r < m directions, the first r columns of ASI grade within the spanned subspace and the
  others are zero (pacemaker's gamma is then the subspace grade).
* What pacemaker's format has no room for is kept in a companion file ``<file>.asi.uq.npz`` (written
  beside the ``.asi``, read with it; :data:`COMPANION_SUFFIX`): per element the rank r and the columns that
  measure the distance of an environment from the spanned subspace (this package's gamma is the larger of
  the subspace grade and that distance, so an environment outside the span raises gamma), the in-domain
  distribution of held-out grades that gives the default flag and halt thresholds
  (:mod:`ace_uq_calc.uncertainty.thresholds`), how the set was built, the SHA-256 of the ``.asi`` it belongs
  to and its own checksum. An ``.asi`` without companion (pacemaker's, or older files of this package) is
  graded like pacemaker grades it and has no data thresholds (the monitor's fixed defaults apply).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ..atomic_io import atomic_write
from ..progress import progress_bar
from .grades import extrapolation_grades_into
from .maxvol import AceUqWarning, condition_number, singular_values  # noqa: F401 (AceUqWarning: public here)
from .subspace_selection import MEMORY_BUDGET, select_subspace_active_set
from .thresholds import GradeDistribution

#: suffix of the companion file of an ``.asi`` (appended to the ``.asi`` path)
COMPANION_SUFFIX = ".uq.npz"
COMPANION_FORMAT = "ace_uq_calc.active_set_companion"
COMPANION_VERSION = 1


def companion_path(path) -> str:
    """The companion file of the ``.asi`` at ``path``."""
    return os.fspath(path) + COMPANION_SUFFIX


def _as_inverse_matrix(matrix, element: str) -> np.ndarray:
    a = np.ascontiguousarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"inverse active set of {element!r} must be a square matrix, got shape {a.shape}")
    return a


@dataclass
class ActiveSet:
    """The active sets of all elements of a potential.

    Attributes
    ----------
    inverse : dict element -> (m, m) C-contiguous float64
        pacemaker's inverse active set ASI (the ``.asi`` content); beyond ``ranks[el]`` its columns are zero.
    nonlinear : bool
        True for non-linear projections (m = nfunc * ndensity, spec 10.2), False for linear (m = nfunc).
    active_projections : dict element -> (r, m) or None
        The selected training rows, when known (they are not stored in files).
    condition_numbers : dict element -> float
        Conditioning of the active rows: cond of the active rows in the equilibrated coordinates of the
        spanned subspace (built here), or cond(ASI) (read from a file without companion).
    ranks : dict element -> int
        r, the dimension the training data span (columns of ASI that grade); m when absent.
    distance_columns : dict element -> (m, m - r)
        Columns whose coordinates measure the distance from the spanned subspace, scaled so that every
        training environment is within the tolerance (rank-deficient elements only).
    grade_distribution : GradeDistribution or None
        Per-atom grades of held-out in-domain atoms: the default thresholds (:meth:`thresholds`).
    info : dict
        How the set was built (JSON-ready: tolerance, passes, ...).
    """

    inverse: dict
    nonlinear: bool = False
    active_projections: dict | None = None
    condition_numbers: dict = field(default_factory=dict)
    ranks: dict = field(default_factory=dict)
    distance_columns: dict = field(default_factory=dict)
    grade_distribution: GradeDistribution | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.inverse = {el: _as_inverse_matrix(asi, el) for el, asi in self.inverse.items()}
        for el, asi in self.inverse.items():
            if el not in self.condition_numbers:
                self.condition_numbers[el] = condition_number(singular_values(asi))
            m = asi.shape[0]
            rank = int(self.ranks.get(el, m))
            columns = self.distance_columns.get(el)
            if columns is None and rank < m:
                raise ValueError(f"element {el!r}: rank {rank} < {m} needs the distance columns")
            if columns is not None and np.shape(columns) != (m, m - rank):
                raise ValueError(f"element {el!r}: distance columns of shape {np.shape(columns)}, expected "
                                 f"{(m, m - rank)}")
            self.ranks[el] = rank
        self._operators = {}

    @property
    def elements(self) -> list:
        return list(self.inverse)

    def _operator_of(self, element: str) -> tuple[np.ndarray, int]:
        """(the grading matrix (m, m) for the gamma kernel, its number of max-columns) of ``element``."""
        operator = self._operators.get(element)
        if operator is None:
            try:
                asi = self.inverse[element]
            except KeyError:
                raise KeyError(f"no active set for element {element!r} (have {', '.join(self.inverse)})") from None
            rank = self.ranks[element]
            matrix = asi
            if rank < asi.shape[0]:
                matrix = np.ascontiguousarray(np.hstack([asi[:, :rank], self.distance_columns[element]]))
            operator = self._operators[element] = (matrix, rank)
        return operator

    def grades(self, element: str, projections) -> np.ndarray:
        """Extrapolation grades gamma (n_atoms,) of atoms of ``element`` from their (n_atoms, m) projections."""
        x = np.ascontiguousarray(projections, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"projections must be a 2-d array (n_atoms, m), got shape {x.shape}")
        gamma = np.zeros(x.shape[0])
        if x.shape[0]:
            matrix, rank = self._operator_of(element)
            extrapolation_grades_into(x, np.arange(x.shape[0]), matrix, 1, gamma, max_columns=rank)
        return gamma

    def grade_atoms(self, elements, species, projections, threads: int = 1) -> dict:
        """Results ``gamma`` (N,) and ``max_gamma`` (0 for no atoms) of a structure whose atoms have species
        indices ``species`` (N,) into ``elements`` and ``projections`` (N, >= m) of the kind of this active
        set (rows padded beyond each element's m). ``threads``: Numba threads of the grading kernel.
        The grader interface of :func:`ace_uq_calc.engine.results.model_results`."""
        n_atoms = len(species)
        gamma = np.zeros(n_atoms)
        for e, element in enumerate(elements):
            rows = np.flatnonzero(species == e)
            if len(rows):
                matrix, rank = self._operator_of(element)
                extrapolation_grades_into(projections, rows, matrix, threads, gamma, max_columns=rank)
        return {"gamma": gamma, "max_gamma": float(gamma.max()) if n_atoms else 0.0}

    def thresholds(self, n_atoms: int):
        """(flag, halt) default thresholds of the largest per-atom gamma of a structure of ``n_atoms`` atoms
        (about 1 % and 0.1 % of in-domain structures above them), or None when the set carries no
        in-domain grade distribution (pacemaker's files, older files)."""
        if self.grade_distribution is None:
            return None
        return self.grade_distribution.thresholds(n_atoms)

    def for_basis(self, basis, source: str = "active set") -> "ActiveSet":
        """This active set after checking that it belongs to ``basis`` (an ACEBasis; ValueError otherwise)."""
        self.check_compatible(basis.nfunc, {el: int(basis.ndensity[e]) for e, el in enumerate(basis.elements)},
                              basis.elements, source=source)
        return self

    def save(self, path) -> None:
        """Write pacemaker's ``.asi`` layout atomically (an uncompressed ``np.savez`` archive, one member per
        element symbol, float64 little-endian C order: readable by pyace and LAMMPS' C++ reader) and, when
        there is anything pacemaker's format cannot hold, the companion file (module docstring); a stale
        companion of an earlier file at ``path`` is removed."""
        members = {el: np.ascontiguousarray(asi, dtype="<f8") for el, asi in self.inverse.items()}
        with atomic_write(path, "wb") as handle:
            np.savez(handle, **members)
        companion = companion_path(path)
        extra = self.grade_distribution is not None or any(r < a.shape[0] for r, a in
                                                           zip(self.ranks.values(), self.inverse.values()))
        if not extra:
            if os.path.exists(companion):
                os.remove(companion)
            return
        with open(path, "rb") as handle:
            asi_digest = hashlib.sha256(handle.read()).hexdigest()
        arrays = {"format": np.array(COMPANION_FORMAT), "version": np.array(COMPANION_VERSION),
                  "asi_sha256": np.array(asi_digest), "nonlinear": np.array(bool(self.nonlinear)),
                  "info": np.array(json.dumps(self.info, sort_keys=True))}
        for el in self.inverse:
            arrays[f"{el}.rank"] = np.array(self.ranks[el])
            arrays[f"{el}.condition_number"] = np.array(float(self.condition_numbers[el]))
            if el in self.distance_columns:
                arrays[f"{el}.distance_columns"] = np.ascontiguousarray(self.distance_columns[el], dtype="<f8")
        if self.grade_distribution is not None:
            arrays.update(self.grade_distribution.to_arrays("distribution."))
        arrays["sha256"] = np.array(_digest_of(arrays))
        with atomic_write(companion, "wb") as handle:
            np.savez(handle, **arrays)

    def check_compatible(self, nfunc_per_element: Mapping, ndensity_per_element: Mapping | None = None,
                         elements: Iterable | None = None, source: str = "active set") -> None:
        """ValueError unless this active set belongs to a potential with these function counts.

        Every element (default: the keys of ``nfunc_per_element``) must have a matrix of size nfunc
        (linear) or nfunc * ndensity (non-linear), all of the same kind, and that kind must agree with
        ``self.nonlinear``. Used for ActiveSet objects handed to the calculator (files are checked by
        :meth:`load`); catches an active set of another potential before it can give wrong grades.
        """
        if elements is None:
            elements = list(nfunc_per_element)
        layouts = {}
        for el in elements:
            if el not in self.inverse:
                have = ", ".join(self.inverse) or "none"
                raise ValueError(f"{source}: no inverse active set for element {el!r} (it has: {have})")
            if el in nfunc_per_element:
                ndensity = None if ndensity_per_element is None else ndensity_per_element.get(el)
                layouts[el] = _layout_of(source, el, self.inverse[el].shape[0], int(nfunc_per_element[el]), ndensity)
        kinds = set(layouts.values())
        if len(kinds) > 1:
            listing = ", ".join(f"{el}: {kind}" for el, kind in layouts.items())
            raise ValueError(f"{source}: elements mix linear and non-linear active sets ({listing})")
        if kinds and (kinds.pop() == "non-linear") != bool(self.nonlinear):
            raise ValueError(
                f"{source}: the matrix sizes are those of a {'linear' if self.nonlinear else 'non-linear'} active "
                f"set, but it is marked nonlinear={self.nonlinear}"
            )

    @classmethod
    def load(cls, path, nfunc_per_element: Mapping | None = None, ndensity_per_element: Mapping | None = None,
             elements: Iterable | None = None) -> "ActiveSet":
        """Read an ``.asi`` file (ours or pacemaker's; also compressed archives).

        Parameters
        ----------
        path : the file
        nfunc_per_element : mapping element -> nfunc, optional
            With it, each matrix size must be nfunc (linear) or nfunc * ndensity (non-linear), and all
            elements must agree; ``nonlinear`` is detected from the sizes. Without it the sizes cannot
            be checked and the set is taken as linear (``nonlinear=False``).
        ndensity_per_element : mapping element -> ndensity, optional
            Needed to recognise non-linear sizes; without it any multiple k * nfunc (k > 1) is accepted
            as non-linear.
        elements : iterable of str, optional
            Elements that must be present (default: the keys of ``nfunc_per_element``, else all members).

        Raises ValueError naming the file for: not an ``.npz`` archive, a missing element, a non-square or
        non-float member, a size that fits neither layout, non-finite entries, mixed linear/non-linear; and
        for a damaged companion file or one that belongs to another ``.asi``.
        """
        members = _read_npz_members(path)
        if elements is None:
            elements = list(nfunc_per_element) if nfunc_per_element is not None else list(members)
        inverse, layouts = {}, {}
        for el in elements:
            matrix = _checked_member(path, members, el)
            if nfunc_per_element is not None and el in nfunc_per_element:
                ndensity = None if ndensity_per_element is None else ndensity_per_element.get(el)
                layouts[el] = _layout_of(path, el, matrix.shape[0], int(nfunc_per_element[el]), ndensity)
            inverse[el] = matrix
        if len(set(layouts.values())) > 1:
            listing = ", ".join(f"{el}: {kind}" for el, kind in layouts.items())
            raise ValueError(f"{path}: elements mix linear and non-linear active sets ({listing})")
        nonlinear = bool(layouts) and next(iter(layouts.values())) == "non-linear"
        extra = _read_companion(path, inverse)
        if extra is not None and bool(extra["nonlinear"]) != nonlinear and layouts:
            raise ValueError(f"{companion_path(path)}: describes a {'non-linear' if extra['nonlinear'] else 'linear'}"
                             f" active set, but {path} has the sizes of a {'non-linear' if nonlinear else 'linear'} one")
        if extra is None:
            return cls(inverse=inverse, nonlinear=nonlinear)
        return cls(inverse=inverse, nonlinear=nonlinear if layouts else bool(extra["nonlinear"]),
                   condition_numbers=extra["condition_numbers"], ranks=extra["ranks"],
                   distance_columns=extra["distance_columns"], grade_distribution=extra["distribution"],
                   info=extra["info"])


def _digest_of(arrays: Mapping) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order); "sha256" is left out."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == "sha256":
            continue
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _read_companion(path, inverse: dict) -> dict | None:
    """The companion file of the ``.asi`` at ``path`` (None if there is none), checked: its own checksum,
    the checksum of the ``.asi`` it belongs to, and the shapes against ``inverse``."""
    companion = companion_path(path)
    if not os.path.exists(companion):
        return None
    members = _read_npz_members(companion)
    if str(members.get("format", "")) != COMPANION_FORMAT:
        raise ValueError(f"{companion}: not an active-set companion file (format {COMPANION_FORMAT!r} expected)")
    if int(members.get("version", -1)) != COMPANION_VERSION:
        raise ValueError(f"{companion}: companion format version {int(members.get('version', -1))}, this code "
                         f"reads {COMPANION_VERSION}")
    if str(members.get("sha256", "")) != _digest_of(members):
        raise ValueError(f"{companion}: checksum mismatch: the file was altered or damaged after it was written")
    with open(path, "rb") as handle:
        asi_digest = hashlib.sha256(handle.read()).hexdigest()
    if str(members["asi_sha256"]) != asi_digest:
        raise ValueError(f"{companion}: belongs to another active set than {path} (the .asi was replaced or "
                         "altered after both were written); rebuild the active set or remove the companion file")
    ranks, columns, conditions = {}, {}, {}
    for el, asi in inverse.items():
        if f"{el}.rank" not in members:
            raise ValueError(f"{companion}: no entry for element {el!r}")
        ranks[el] = int(members[f"{el}.rank"])
        conditions[el] = float(members[f"{el}.condition_number"])
        if f"{el}.distance_columns" in members:
            columns[el] = np.ascontiguousarray(members[f"{el}.distance_columns"], dtype=np.float64)
    distribution = None
    if "distribution.grades" in members:
        distribution = GradeDistribution.from_arrays(members, "distribution.")
    try:
        info = json.loads(str(members["info"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{companion}: unreadable build information ({exc})") from None
    return {"ranks": ranks, "distance_columns": columns, "condition_numbers": conditions,
            "distribution": distribution, "info": info, "nonlinear": bool(members["nonlinear"])}


def _read_npz_members(path) -> dict:
    """All members of an .npz archive as arrays (allow_pickle=False); ValueError naming the file otherwise."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # text files, truncated archives, pickles: np.load raises various types
        raise ValueError(f"{path}: not a NumPy .npz active-set archive ({type(exc).__name__}: {exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz active-set archive (it holds a single array)")
    try:
        with archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise ValueError(f"{path}: unreadable .npz active-set archive ({type(exc).__name__}: {exc})") from exc


def _checked_member(path, members: dict, element: str) -> np.ndarray:
    if element not in members:
        have = ", ".join(sorted(members)) or "none"
        raise ValueError(f"{path}: element {element!r} is missing from the active-set file (members: {have})")
    matrix = members[element]
    if matrix.dtype.kind not in "fiu":
        raise ValueError(f"{path}: member {element!r} has dtype {matrix.dtype}, expected float64")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{path}: member {element!r} is not a square matrix (shape {matrix.shape})")
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{path}: member {element!r} contains non-finite values (NaN or inf)")
    return matrix


def _layout_of(path, element: str, size: int, nfunc: int, ndensity: int | None) -> str:
    """'linear' or 'non-linear' from the matrix size (spec 10.3); ValueError if it fits neither."""
    if size == nfunc:
        return "linear"
    if ndensity is not None:
        if size == nfunc * ndensity:
            return "non-linear"
        expected = f"{nfunc} (linear, nfunc) or {nfunc * ndensity} (non-linear, nfunc*ndensity)"
    else:
        if nfunc > 0 and size % nfunc == 0 and size > nfunc:
            return "non-linear"
        expected = f"{nfunc} (linear, nfunc) or a multiple of it (non-linear)"
    raise ValueError(f"{path}: member {element!r} has size {size}x{size}, expected {expected}")


# ----------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------

def build_active_set_from_projections(projections_by_element: Mapping, tolerance: float = 1.001,
                                      batch_size: int = 20000, nonlinear: bool = False, progress: bool = False,
                                      max_passes: int | None = None, memory_budget: float = MEMORY_BUDGET,
                                      grade_distribution: GradeDistribution | None = None) -> ActiveSet:
    """Select the active set of every element (:func:`~ace_uq_calc.uncertainty.subspace_selection.select_subspace_active_set`).

    Parameters
    ----------
    projections_by_element : mapping element -> (n, m) array or batch source
        An array is cut into ``batch_size`` row batches; anything else is passed on (preferably a callable
        returning a fresh batch iterator, see ``select_subspace_active_set``).
    tolerance : MaxVol tolerance (pacemaker's default 1.001)
    nonlinear : whether the projections are the non-linear ones (recorded in the result)
    progress : a progress bar per element on stderr
    max_passes, memory_budget : see ``select_subspace_active_set``
    grade_distribution : the in-domain grade distribution to attach (see :func:`~ace_uq_calc.uncertainty.build.build_active_set`)
    """
    inverse, active, conditions, ranks, distance, info = {}, {}, {}, {}, {}, {"tolerance": float(tolerance)}
    options = {} if max_passes is None else {"max_passes": int(max_passes)}
    for element, source in projections_by_element.items():
        total = None
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise ValueError(f"projections of {element!r} must be a 2-d array, got shape {source.shape}")
            if source.shape[0] == 0:
                raise ValueError(f"no training projections for element {element!r}")
            total = source.shape[0]
            array = source
            source = lambda array=array: (array[k:k + batch_size] for k in range(0, array.shape[0], batch_size))  # noqa: E731
        with progress_bar(total, element, progress, unit="row") as bar:
            try:
                selected = select_subspace_active_set(source, None, tolerance, progress=bar if progress else None,
                                                      label=f"element {element}: ", memory_budget=memory_budget,
                                                      **options)
            except ValueError as exc:
                raise ValueError(f"element {element!r}: {exc}") from exc
        inverse[element] = selected.inverse
        active[element] = selected.rows
        conditions[element] = selected.condition_number
        ranks[element] = selected.rank
        if selected.rank < selected.n_functions:
            distance[element] = selected.distance_columns
        info[element] = {"rank": selected.rank, "functions": selected.n_functions, "rows": selected.n_rows,
                         "maxvol_passes": selected.passes, "source_reads": selected.source_reads,
                         "converged": selected.converged, "distance_scale": selected.distance_scale}
    return ActiveSet(inverse=inverse, nonlinear=nonlinear, active_projections=active, condition_numbers=conditions,
                     ranks=ranks, distance_columns=distance, grade_distribution=grade_distribution, info=info)
