"""Ensemble files: a ``.yaml`` file whose top-level key ``ace_uq_ensemble`` lists member potential paths
(relative to the ensemble file); accepted wherever a list of member potentials is, e.g.::

    ace_uq_ensemble:
      - pot.ensemble/member_00.yaml
      - pot.ensemble/member_01.yaml
"""
from __future__ import annotations

import os

import yaml

from ..atomic_io import atomic_write
from .yaml_format import PotentialFormatError

#: top-level key of an ensemble file (a YAML list of member paths, relative to the file)
ENSEMBLE_FILE_KEY = "ace_uq_ensemble"


def read_ensemble_file(path) -> list:
    """Member paths of an ensemble file (see module docstring), resolved relative to the file."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    if not is_ensemble_document(document):
        raise PotentialFormatError(f"{path}: not an ensemble file (needs a top-level '{ENSEMBLE_FILE_KEY}' list)")
    members = document[ENSEMBLE_FILE_KEY]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise PotentialFormatError(f"{path}: '{ENSEMBLE_FILE_KEY}' must be a non-empty list of potential paths")
    base = os.path.dirname(os.path.abspath(path))
    return [m if os.path.isabs(m) else os.path.join(base, m) for m in members]


def is_ensemble_document(document) -> bool:
    return isinstance(document, dict) and ENSEMBLE_FILE_KEY in document


def is_ensemble_file(path) -> bool:
    """True for a ``.yaml`` file whose first non-comment line starts the ensemble key (cheap check)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                return stripped.startswith(ENSEMBLE_FILE_KEY)
    return False


def write_ensemble_file(path, member_paths) -> None:
    """Write an ensemble file listing ``member_paths`` (stored relative to the file's directory)."""
    base = os.path.dirname(os.path.abspath(os.fspath(path)))
    lines = [f"{ENSEMBLE_FILE_KEY}:"]
    for member in member_paths:
        rel = os.path.relpath(os.path.abspath(os.fspath(member)), base)
        lines.append(f"  - {rel!r}" if any(c in rel for c in ":#'\"") else f"  - {rel}")
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def expand_members(potentials) -> list:
    """A list of members (paths, PotentialFile, ACEBasis; ensemble files are expanded) from a list or
    from one ensemble file path."""
    if isinstance(potentials, (str, os.PathLike)):
        potentials = [potentials]
    out = []
    for item in potentials:
        if isinstance(item, (str, os.PathLike)) and is_ensemble_file(item):
            out.extend(read_ensemble_file(item))
        else:
            out.append(item)
    if not out:
        raise ValueError("an ensemble needs at least one member potential")
    return out


def member_list(potential, ensemble=None) -> list:
    """The member potentials of a calculator, ensemble files expanded: ``potential`` (a path,
    PotentialFile or ACEBasis, a list of them, or an ensemble file) followed by ``ensemble`` (further
    members: a list, or an ensemble file). One member: a single model."""
    items = list(potential) if isinstance(potential, (list, tuple)) else [potential]
    if ensemble:
        items += [ensemble] if isinstance(ensemble, (str, os.PathLike)) else list(ensemble)
    return expand_members(items)
