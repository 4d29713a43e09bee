"""Reader and writer of pacemaker's B-basis ``.yaml`` potential files.

The format is specified in ``shared/docs/pacemaker-format.md`` (section 2). This module
only turns the file into plain Python objects (:class:`PotentialFile`); building the
evaluation tables from them is the job of :mod:`ace_uq_calc.model.basis`.

Units: distances in Angstrom, energies in eV.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from ..atomic_io import atomic_write
from .elements import ATOMIC_NUMBERS


class PotentialFormatError(ValueError):
    """A potential file is missing a field or has a malformed one."""


# Sanity limits far above any fitted pacemaker potential (radial sizes ~ 10-30, lmax ~ 6): a corrupted
# digit must give an error naming the field, not an attempt to allocate terabytes of tables.
MAX_RADIAL_FUNCTIONS = 1000        # nradmaxi, nradbaseij and the nr of a function
MAX_ANGULAR_MOMENTUM = 100         # lmaxi, nl and lint of a function
MAX_COUPLING_TERMS = 2_000_000     # prod_{t < rank} (2 l_t + 1): bounds the generalized CG work of a function


#: Safe loading only (no python/* tags): libyaml's C SafeLoader when PyYAML has it (7x faster), else the
#: pure-Python SafeLoader. Both build plain dicts, lists, strings and numbers with SafeConstructor.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: metadata key prefix of one-body reference energies (eV) written by ace_uq_calc's fitting;
#: pacemaker ignores metadata, so its energies exclude them.
REFERENCE_ENERGY_KEY = "reference_energy_"

EMBEDDING_TYPES = ("FinnisSinclair", "FinnisSinclairShiftedScaled")
INNER_CUTOFF_TYPES = ("distance", "density", "zbl")
RADIAL_BASES = ("SBessel", "ChebExpCos", "ChebPow")


@dataclass
class EmbeddingSpec:
    """Embedding of one central element (spec 8): E_i = f_cut * sum_p w_p F(rho_p; m_p) + rho_core."""

    npoti: str
    weights: np.ndarray        # (ndensity,) w_p
    exponents: np.ndarray      # (ndensity,) m_p
    rho_core_cut: float = 100000.0   # eV
    drho_core_cut: float = 250.0     # eV

    @property
    def ndensity(self) -> int:
        return len(self.weights)


@dataclass
class BondSpec:
    """Radial description of the ordered bond (central, neighbour) (spec 2.2, 3)."""

    radbase: str
    radparameters: tuple
    radcoefficients: np.ndarray   # (nradmax, lmax + 1, nradbase) of this bond, unpadded
    rcut: float                   # Angstrom
    dcut: float                   # Angstrom
    r_in: float = 0.0
    delta_in: float = 0.0
    inner_cutoff_type: str = "density"
    core_repulsion: tuple = (0.0, 0.0)
    nradmax: int = 0
    lmax: int = 0
    nradbase: int = 0
    cutoff_function_name: str = "cos"

    def same_as(self, other: "BondSpec") -> bool:
        return (
            self.radbase == other.radbase
            and tuple(self.radparameters) == tuple(other.radparameters)
            and self.rcut == other.rcut
            and self.dcut == other.dcut
            and self.r_in == other.r_in
            and self.delta_in == other.delta_in
            and self.inner_cutoff_type == other.inner_cutoff_type
            and tuple(self.core_repulsion) == tuple(other.core_repulsion)
            and self.radcoefficients.shape == other.radcoefficients.shape
            and np.array_equal(self.radcoefficients, other.radcoefficients)
        )


@dataclass
class FunctionSpec:
    """One B-basis function (an ``nbody`` entry): central element, neighbour elements,
    1-based radial indices, angular momenta, intermediate couplings, coefficients per density."""

    central: str
    neighbours: tuple
    nr: tuple
    nl: tuple
    lint: tuple
    coefficients: np.ndarray   # (ndensity,)
    block: str = ""
    file_index: int = 0        # position among the nbody entries with this central element, in file order

    @property
    def rank(self) -> int:
        return len(self.neighbours)


@dataclass
class PotentialFile:
    """Everything a B-basis ``.yaml`` says, in plain objects."""

    elements: list                     # sorted symbols = species order
    delta_spline_bins: float
    embeddings: dict                   # element -> EmbeddingSpec
    bonds: dict                        # (central, neighbour) -> BondSpec
    functions: dict                    # element -> list[FunctionSpec] in file order
    metadata: dict = field(default_factory=dict)
    auxdata: Any = None
    source: str = "<memory>"
    block_order: list = field(default_factory=list)   # speciesblock names in file order

    @property
    def nfunc(self) -> dict:
        return {el: len(self.functions[el]) for el in self.elements}


# --------------------------------------------------------------------------------------
# reading


class _Fields:
    """Typed access to a YAML mapping that names the file and field in every error."""

    def __init__(self, mapping, where: str):
        if not isinstance(mapping, dict):
            raise PotentialFormatError(f"{where}: expected a mapping, found {type(mapping).__name__}")
        self.mapping = mapping
        self.where = where

    def has(self, key):
        return key in self.mapping

    def raw(self, key, default=...):
        if key not in self.mapping:
            if default is ...:
                raise PotentialFormatError(f"{self.where}: missing field '{key}'")
            return default
        return self.mapping[key]

    def number(self, key, default=...) -> float:
        value = self.raw(key, default)
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise PotentialFormatError(f"{self.where}: field '{key}' must be a number, found {value!r}") from None
        if not math.isfinite(out):
            raise PotentialFormatError(f"{self.where}: field '{key}' is not finite ({value!r})")
        return out

    def integer(self, key, default=...) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise PotentialFormatError(f"{self.where}: field '{key}' must be an integer, found {value!r}")
        return int(value)

    def bounded_integer(self, key, low: int, high: int, default=...) -> int:
        value = self.integer(key, default)
        if not low <= value <= high:
            raise PotentialFormatError(f"{self.where}: field '{key}' must lie in {low}..{high}, found {value}")
        return value

    def boolean(self, key, default=...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise PotentialFormatError(f"{self.where}: field '{key}' must be true or false, found {value!r}")
        return value

    def string(self, key, default=...) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise PotentialFormatError(f"{self.where}: field '{key}' must be a string, found {value!r}")
        return value

    def numbers(self, key, default=...) -> list:
        value = self.raw(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise PotentialFormatError(f"{self.where}: field '{key}' must be a list of numbers, found {value!r}")
        try:
            out = [float(v) for v in value]
        except (TypeError, ValueError):
            raise PotentialFormatError(f"{self.where}: field '{key}' must be a list of numbers, found {value!r}") from None
        if not all(math.isfinite(v) for v in out):
            raise PotentialFormatError(f"{self.where}: field '{key}' has non-finite entries")
        return out

    def integers(self, key, default=...) -> list:
        value = self.raw(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and int(v) == v for v in value
        ):
            raise PotentialFormatError(f"{self.where}: field '{key}' must be a list of integers, found {value!r}")
        return [int(v) for v in value]


_BOND_KEYS = ("nradmaxi", "lmaxi", "nradbaseij", "radbase", "radparameters", "radcoefficients", "rcutij", "dcutij")


def _read_bond(fields: _Fields, central: str, neighbour: str) -> BondSpec:
    nradmax = fields.bounded_integer("nradmaxi", 0, MAX_RADIAL_FUNCTIONS)
    lmax = fields.bounded_integer("lmaxi", 0, MAX_ANGULAR_MOMENTUM)
    nradbase = fields.bounded_integer("nradbaseij", 0, MAX_RADIAL_FUNCTIONS)
    radbase = fields.string("radbase")
    if radbase not in RADIAL_BASES and not radbase.startswith("TEST_"):
        if radbase == "ChebLinear":
            raise PotentialFormatError(
                f"{fields.where}: radbase 'ChebLinear' is not supported (its functions do not vanish at the cut-off)"
            )
        raise PotentialFormatError(f"{fields.where}: unknown radbase {radbase!r}; known: {', '.join(RADIAL_BASES)}")
    radparameters = tuple(fields.numbers("radparameters"))
    if radbase in ("ChebExpCos", "ChebPow") and not radparameters:
        raise PotentialFormatError(f"{fields.where}: field 'radparameters' needs lambda for {radbase}")
    if radbase == "ChebExpCos" and radparameters[0] == 0.0:
        raise PotentialFormatError(
            f"{fields.where}: field 'radparameters': lambda of ChebExpCos must be non-zero (0 divides by zero)"
        )
    raw = fields.raw("radcoefficients")
    try:
        crad = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise PotentialFormatError(f"{fields.where}: field 'radcoefficients' is not a regular numeric array") from None
    if crad.ndim == 1:   # legacy flat list: k outermost, then n, then l innermost
        if crad.size != nradmax * (lmax + 1) * nradbase:
            raise PotentialFormatError(
                f"{fields.where}: flat 'radcoefficients' has {crad.size} entries, expected "
                f"nradmaxi*(lmaxi+1)*nradbaseij = {nradmax * (lmax + 1) * nradbase}"
            )
        crad = crad.reshape(nradbase, nradmax, lmax + 1).transpose(1, 2, 0)
    if crad.ndim != 3:
        raise PotentialFormatError(f"{fields.where}: field 'radcoefficients' must be a 3-D list [n][l][k]")
    if crad.shape != (nradmax, lmax + 1, nradbase):
        raise PotentialFormatError(
            f"{fields.where}: field 'radcoefficients' has shape {crad.shape}, expected "
            f"(nradmaxi, lmaxi+1, nradbaseij) = {(nradmax, lmax + 1, nradbase)}"
        )
    if not np.all(np.isfinite(crad)):
        raise PotentialFormatError(f"{fields.where}: field 'radcoefficients' has non-finite entries")
    rcut = fields.number("rcutij")
    if rcut <= 0:
        raise PotentialFormatError(f"{fields.where}: field 'rcutij' must be positive, found {rcut}")
    dcut = fields.number("dcutij")
    core = fields.numbers("core-repulsion", [0.0, 0.0])
    if len(core) != 2:
        raise PotentialFormatError(f"{fields.where}: field 'core-repulsion' must be [prefactor, lambda]")
    inner = fields.string("inner_cutoff_type", "density")
    if inner not in INNER_CUTOFF_TYPES:
        raise PotentialFormatError(
            f"{fields.where}: unknown inner_cutoff_type {inner!r}; known: {', '.join(INNER_CUTOFF_TYPES)}"
        )
    r_in = fields.number("r_in", 0.0)
    delta_in = fields.number("delta_in", 0.0)
    if delta_in < 0:
        raise PotentialFormatError(f"{fields.where}: field 'delta_in' must be >= 0")
    return BondSpec(
        radbase=radbase,
        radparameters=radparameters,
        radcoefficients=crad,
        rcut=rcut,
        dcut=dcut,
        r_in=r_in,
        delta_in=delta_in,
        inner_cutoff_type=inner,
        core_repulsion=(core[0], core[1]),
        nradmax=nradmax,
        lmax=lmax,
        nradbase=nradbase,
        cutoff_function_name=str(fields.raw("NameOfCutoffFunctionij", "cos")),
    )


def _read_function(entry, where: str, block_symbols: list, ndensity_of) -> FunctionSpec | None:
    f = _Fields(entry, where)
    type_field = f.raw("type")
    symbols = type_field.split() if isinstance(type_field, str) else None
    if not symbols or len(symbols) < 2:
        raise PotentialFormatError(f"{where}: field 'type' must name the central element and at least one neighbour")
    if symbols[0] != block_symbols[0]:
        raise PotentialFormatError(
            f"{where}: function central element {symbols[0]} differs from its block's central element {block_symbols[0]}"
        )
    unknown = sorted(set(symbols) - set(block_symbols))
    if unknown:
        raise PotentialFormatError(f"{where}: 'type' uses elements {unknown} not named by its speciesblock")
    if f.boolean("skip", False):
        return None
    rank = len(symbols) - 1
    nr = f.integers("nr")
    nl = f.integers("nl")
    if len(nr) != rank or len(nl) != rank:
        raise PotentialFormatError(f"{where}: 'nr' and 'nl' need {rank} entries for type {type_field!r}")
    if min(nr) < 1:
        raise PotentialFormatError(f"{where}: 'nr' entries are 1-based and must be >= 1")
    if max(nr) > MAX_RADIAL_FUNCTIONS:
        raise PotentialFormatError(f"{where}: field 'nr' = {nr} exceeds {MAX_RADIAL_FUNCTIONS}")
    if min(nl) < 0:
        raise PotentialFormatError(f"{where}: 'nl' entries must be >= 0")
    if max(nl) > MAX_ANGULAR_MOMENTUM:
        raise PotentialFormatError(f"{where}: field 'nl' = {nl} exceeds {MAX_ANGULAR_MOMENTUM}")
    lint = f.integers("lint", [])
    if lint and max(abs(v) for v in lint) > MAX_ANGULAR_MOMENTUM:
        raise PotentialFormatError(f"{where}: field 'lint' = {lint} exceeds {MAX_ANGULAR_MOMENTUM}")
    terms = math.prod(2 * l + 1 for l in nl[:-1])
    if terms > MAX_COUPLING_TERMS:
        raise PotentialFormatError(
            f"{where}: field 'nl' = {nl} couples {terms:.3g} m-combinations (limit {MAX_COUPLING_TERMS})"
        )
    coeffs = f.numbers("c")
    nd = ndensity_of(symbols[0])
    if nd is not None and len(coeffs) != nd:
        raise PotentialFormatError(f"{where}: field 'c' has {len(coeffs)} entries, expected ndensity = {nd}")
    return FunctionSpec(
        central=symbols[0],
        neighbours=tuple(symbols[1:]),
        nr=tuple(nr),
        nl=tuple(nl),
        lint=tuple(lint),
        coefficients=np.asarray(coeffs, dtype=np.float64),
    )


def parse_potential(document, source: str = "<memory>") -> PotentialFile:
    """Build a :class:`PotentialFile` from an already parsed YAML document (a dict)."""
    if not isinstance(document, dict):
        raise PotentialFormatError(
            f"{source}: not a potential file: the top level must be a mapping with 'species', "
            f"found {type(document).__name__} (truncated file?)"
        )
    top = _Fields(document, source)
    species = top.raw("species")
    if not isinstance(species, list) or not species:
        raise PotentialFormatError(f"{source}: field 'species' must be a non-empty list of species blocks")
    glob = _Fields(top.raw("global", {}), f"{source}: global")
    h = glob.number("DeltaSplineBins", 0.001)
    if h <= 0:
        raise PotentialFormatError(f"{source}: global.DeltaSplineBins must be > 0, found {h}")

    blocks = []
    for b, block in enumerate(species):
        fields = _Fields(block, f"{source}: species[{b}]")
        name = fields.string("speciesblock")
        symbols = name.split()
        if not symbols:
            raise PotentialFormatError(f"{source}: species[{b}]: empty 'speciesblock'")
        fields.where = f"{source}: speciesblock '{name}'"
        blocks.append((symbols, fields))

    elements = sorted({s for symbols, _ in blocks for s in symbols})
    bad = [s for s in elements if s not in ATOMIC_NUMBERS]
    if bad:
        raise PotentialFormatError(f"{source}: unknown element symbols {bad} in speciesblock names")

    embeddings: dict = {}
    bonds: dict = {}
    for symbols, fields in blocks:
        if len(symbols) == 1:
            el = symbols[0]
            if el in embeddings:
                raise PotentialFormatError(f"{fields.where}: duplicate 1-species block")
            npoti = fields.string("npoti")
            if npoti not in EMBEDDING_TYPES:
                raise PotentialFormatError(
                    f"{fields.where}: unknown npoti {npoti!r}; known: {', '.join(EMBEDDING_TYPES)}"
                )
            nd = fields.integer("ndensityi")
            if nd < 1:
                raise PotentialFormatError(f"{fields.where}: field 'ndensityi' must be >= 1, found {nd}")
            params = fields.numbers("parameters")
            if len(params) != 2 * nd:
                raise PotentialFormatError(
                    f"{fields.where}: field 'parameters' must hold 2*ndensityi = {2 * nd} numbers, found {len(params)}"
                )
            if npoti == "FinnisSinclairShiftedScaled" and min(params[1::2]) <= 0.0:
                raise PotentialFormatError(
                    f"{fields.where}: field 'parameters': the exponents m of FinnisSinclairShiftedScaled "
                    f"must be > 0, found {params[1::2]}"
                )
            embeddings[el] = EmbeddingSpec(
                npoti=npoti,
                weights=np.asarray(params[0::2], dtype=np.float64),
                exponents=np.asarray(params[1::2], dtype=np.float64),
                rho_core_cut=fields.number("rho_core_cut", 100000.0),
                drho_core_cut=fields.number("drho_core_cut", 250.0),
            )
        if len(symbols) <= 2 and any(fields.has(k) for k in _BOND_KEYS):
            central, neighbour = symbols[0], symbols[-1]
            bond = _read_bond(fields, central, neighbour)
            if (central, neighbour) in bonds:
                raise PotentialFormatError(f"{fields.where}: bond {central}-{neighbour} given twice")
            bonds[(central, neighbour)] = bond
        elif len(symbols) > 2 and any(fields.has(k) for k in _BOND_KEYS + ("npoti",)):
            raise PotentialFormatError(f"{fields.where}: blocks of 3 or more species carry functions only")

    missing = [el for el in elements if el not in embeddings]
    if missing:
        raise PotentialFormatError(f"{source}: no 1-species block (embedding) for elements {missing}")

    # Bonds are symmetric: copy X-Y to Y-X if only one is given; both must agree otherwise.
    for (a, b), bond in list(bonds.items()):
        if (b, a) not in bonds:
            bonds[(b, a)] = bond
        elif not bond.same_as(bonds[(b, a)]):
            raise PotentialFormatError(f"{source}: speciesblocks '{a} {b}' and '{b} {a}' describe the bond differently")
    missing_bonds = [f"{a}-{b}" for a in elements for b in elements if (a, b) not in bonds]
    if missing_bonds:
        raise PotentialFormatError(f"{source}: no radial description for bonds {missing_bonds}")
    for (a, b), bond in bonds.items():
        if math.floor(bond.rcut / h) < 2:
            raise PotentialFormatError(
                f"{source}: bond {a}-{b}: field 'rcutij' = {bond.rcut} gives fewer than two spline knots "
                f"with global.DeltaSplineBins = {h}"
            )
    inner_types = {bond.inner_cutoff_type for bond in bonds.values()}
    if len(inner_types) > 1:
        raise PotentialFormatError(f"{source}: inner_cutoff_type differs between bonds: {sorted(inner_types)}")

    functions: dict = {el: [] for el in elements}
    for symbols, fields in blocks:
        nbody = fields.raw("nbody", [])
        if nbody is None:
            nbody = []
        if not isinstance(nbody, list):
            raise PotentialFormatError(f"{fields.where}: field 'nbody' must be a list")
        for k, entry in enumerate(nbody):
            spec = _read_function(
                entry,
                f"{fields.where}: nbody[{k}]",
                symbols,
                lambda el: embeddings[el].ndensity if el in embeddings else None,
            )
            if spec is None:
                continue
            spec.block = " ".join(symbols)
            spec.file_index = len(functions[spec.central])
            functions[spec.central].append(spec)

    metadata = top.raw("metadata", {}) or {}
    if not isinstance(metadata, dict):
        raise PotentialFormatError(f"{source}: field 'metadata' must be a mapping")
    return PotentialFile(
        elements=elements,
        delta_spline_bins=h,
        embeddings=embeddings,
        bonds=bonds,
        functions=functions,
        metadata=metadata,
        auxdata=top.raw("auxdata", None),
        source=source,
        block_order=[" ".join(s) for s, _ in blocks],
    )


def read_potential_file(path) -> PotentialFile:
    """Read a pacemaker B-basis ``.yaml`` (safe YAML loading only)."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PotentialFormatError(f"{path}: cannot read potential file ({exc.strerror})") from None
    if text.strip() and not text.endswith("\n"):
        raise PotentialFormatError(
            f"{path}: the potential file does not end with a newline: it was truncated (a file cut after a "
            "complete function entry would still parse, with fewer functions), so it is refused")
    stream = io.StringIO(text)
    stream.name = path           # so that PyYAML's error marks name the file, with line and column
    try:
        document = yaml.load(stream, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise PotentialFormatError(f"{path}: not valid YAML: {exc}") from None
    if document is None:
        raise PotentialFormatError(f"{path}: empty potential file")
    metadata = document.get("metadata") if isinstance(document, dict) else None
    verify_checksum(text, metadata if isinstance(metadata, dict) else {}, path)
    return parse_potential(document, source=path)


# --------------------------------------------------------------------------------------
# checksum of the files written by ace_uq_calc

#: metadata key of the SHA-256 checksum that ace_uq_calc writes into every potential file; files
#: without it (written by pacemaker or by hand) are read without a check
CHECKSUM_KEY = "ace_uq_calc_sha256"
_CHECKSUM_LINE = re.compile(r"^  " + CHECKSUM_KEY + r": .*\n", re.MULTILINE)


def _checksum_of(text: str) -> str:
    """SHA-256 (hex) of a potential file's text without its checksum line."""
    return hashlib.sha256(_CHECKSUM_LINE.sub("", text, count=1).encode("utf-8")).hexdigest()


def verify_checksum(text: str, metadata: dict, source: str) -> None:
    """PotentialFormatError naming ``source`` when the file's stored checksum does not match its text
    (altered, truncated at a line end, or otherwise damaged after it was written); no check without one."""
    stored = (metadata or {}).get(CHECKSUM_KEY)
    if stored is None:
        return
    actual = _checksum_of(text)
    if str(stored) != actual:
        raise PotentialFormatError(
            f"{source}: checksum mismatch (metadata {CHECKSUM_KEY} = {stored}, content gives {actual}): the file "
            "was altered or truncated after ace_uq_calc wrote it; refit or restore it (remove the "
            f"{CHECKSUM_KEY} line to accept a deliberate edit)")


# --------------------------------------------------------------------------------------
# writing


def _flow(values) -> str:
    return "[" + ", ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in values) + "]"


def _num(value: float) -> str:
    return repr(float(value))


def format_potential(pot: PotentialFile) -> str:
    """Text of a pacemaker-readable B-basis ``.yaml`` (17 significant digits via repr)."""
    out = io.StringIO()
    if pot.metadata:
        out.write(yaml.safe_dump({"metadata": {str(k): str(v) for k, v in pot.metadata.items()}}, sort_keys=True))
    out.write("global:\n  DeltaSplineBins: %s\n" % _num(pot.delta_spline_bins))
    out.write("species:\n")
    def block_of(f):
        return (f.central,) + tuple(sorted(set(f.neighbours) - {f.central}))

    blocks = [(el,) for el in pot.elements]
    blocks += [(a, b) for a in pot.elements for b in pot.elements if a != b]
    blocks += sorted({block_of(f) for el in pot.elements for f in pot.functions[el]} - set(blocks))
    for symbols in blocks:
        out.write("  - speciesblock: %s\n" % " ".join(symbols))
        if len(symbols) == 1:
            emb = pot.embeddings[symbols[0]]
            params = [v for pair in zip(emb.weights, emb.exponents) for v in pair]
            out.write("    ndensityi: %d\n" % emb.ndensity)
            out.write("    npoti: %s\n" % emb.npoti)
            out.write("    parameters: %s\n" % _flow([float(v) for v in params]))
            out.write("    rho_core_cut: %s\n" % _num(emb.rho_core_cut))
            out.write("    drho_core_cut: %s\n" % _num(emb.drho_core_cut))
        funcs = [f for f in pot.functions[symbols[0]] if block_of(f) == symbols]
        if len(symbols) > 2:
            out.write("    nbody:\n" if funcs else "    nbody: []\n")
            for f in funcs:
                out.write("      - %s\n" % _function_entry(f))
            continue
        bond = pot.bonds[(symbols[0], symbols[-1])]
        out.write("    nradmaxi: %d\n" % bond.nradmax)
        out.write("    lmaxi: %d\n" % bond.lmax)
        out.write("    rcutij: %s\n" % _num(bond.rcut))
        out.write("    dcutij: %s\n" % _num(bond.dcut))
        out.write("    NameOfCutoffFunctionij: %s\n" % bond.cutoff_function_name)
        out.write("    r_in: %s\n" % _num(bond.r_in))
        out.write("    delta_in: %s\n" % _num(bond.delta_in))
        out.write("    inner_cutoff_type: %s\n" % bond.inner_cutoff_type)
        out.write("    nradbaseij: %d\n" % bond.nradbase)
        out.write("    radbase: %s\n" % bond.radbase)
        out.write("    radparameters: %s\n" % _flow([float(v) for v in bond.radparameters]))
        crad = bond.radcoefficients
        out.write("    radcoefficients: [%s]\n" % ", ".join(
            "[" + ", ".join(_flow([float(v) for v in crad[n, l]]) for l in range(crad.shape[1])) + "]"
            for n in range(crad.shape[0])
        ))
        out.write("    core-repulsion: %s\n" % _flow([float(v) for v in bond.core_repulsion]))
        out.write("    nbody:\n" if funcs else "    nbody: []\n")
        for f in funcs:
            out.write("      - %s\n" % _function_entry(f))
    return out.getvalue()


def _function_entry(f: FunctionSpec) -> str:
    entry = "{type: %s, nr: %s, nl: %s" % (" ".join((f.central,) + f.neighbours), _flow(f.nr), _flow(f.nl))
    if f.lint:
        entry += ", lint: %s" % _flow(f.lint)
    return entry + ", c: %s}" % _flow([float(c) for c in f.coefficients])


def write_potential_file(pot: PotentialFile, path) -> None:
    """Write ``pot`` as a B-basis ``.yaml``, atomically (temporary file, fsync, rename), with the
    SHA-256 checksum of its content in the metadata (:data:`CHECKSUM_KEY`, verified on reading)."""
    marked = dataclasses.replace(pot, metadata={**(pot.metadata or {}), CHECKSUM_KEY: "-"})
    text = format_potential(marked)
    text = text.replace(f"  {CHECKSUM_KEY}: '-'\n", f"  {CHECKSUM_KEY}: '{_checksum_of(text)}'\n", 1)
    with atomic_write(path, mode="w") as handle:
        handle.write(text)


def reference_energies_of(pot: PotentialFile) -> dict:
    """One-body reference energies E0 (eV per atom) stored in the metadata; empty if none."""
    out = {}
    for key, value in (pot.metadata or {}).items():
        if str(key).startswith(REFERENCE_ENERGY_KEY):
            element = str(key)[len(REFERENCE_ENERGY_KEY):]
            try:
                out[element] = float(value)
            except ValueError:
                raise PotentialFormatError(f"{pot.source}: metadata '{key}' is not a number: {value!r}") from None
    return out
