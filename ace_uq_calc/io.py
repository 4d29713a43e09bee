"""Writing structures safely: whole files atomically, trajectories frame by frame.

ASE's writers drop calculator results they do not know, so per-atom uncertainties go into
``atoms.arrays`` and per-structure values into ``atoms.info`` before writing.
"""
from __future__ import annotations

import io
import os

import ase.io

from .atomic_io import atomic_write


def frame_text(atoms) -> str:
    """One extended-XYZ frame as text (results stored in arrays/info are kept)."""
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    return buffer.getvalue()


def write_frames(path, frames) -> None:
    """Write all frames as extended XYZ atomically (temporary file, fsync, rename)."""
    text = "".join(frame_text(atoms) for atoms in frames)
    with atomic_write(path, mode="w") as handle:
        handle.write(text)


def append_frame(path, atoms) -> None:
    """Append one complete frame to an extended-XYZ file and flush it to disk.

    The frame is formatted in memory first and written with a single call, so a reader never
    sees half a frame from a writer that was stopped between frames.
    """
    text = frame_text(atoms)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
