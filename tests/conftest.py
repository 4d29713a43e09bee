"""Shared test helpers: locating ../shared and skipping (or failing) when it is absent."""
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "pacemaker"
DATA = SHARED / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"


def require_shared(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip, or fail when ACE_UQ_REQUIRE_SHARED=1."""
    if path.exists():
        return path
    msg = f"shared file {path} is absent (it lives in ../shared next to the project)"
    if os.environ.get("ACE_UQ_REQUIRE_SHARED") == "1":
        pytest.fail(msg + " and ACE_UQ_REQUIRE_SHARED=1", pytrace=False)
    pytest.skip(msg)


def fixture_file(name: str) -> Path:
    """A pacemaker fixture file: from ../shared when present, else the copy in tests/data, else skip/fail."""
    shared = FIXTURES / name
    if shared.exists():
        return shared
    local = TEST_DATA / name
    if local.exists() and os.environ.get("ACE_UQ_REQUIRE_SHARED") != "1":
        return local
    return require_shared(shared)
