"""The package layout: ``ace-uq errors`` and its former name ``eval``, the progress bar, the cluster
cut-out as a plain function, and the import rules of the cli and monitor packages."""
import ast
import io
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from ace_uq_calc.cli import main
from ace_uq_calc.demo import example_files
from ace_uq_calc.monitor import cut_out_cluster
from ace_uq_calc.progress import progress_bar

PACKAGE = Path(__file__).resolve().parents[1] / "ace_uq_calc"


@pytest.fixture()
def labelled(tmp_path):
    """Three rattled Cu cells labelled by EMT (energy, forces, stress), as extended XYZ."""
    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_stress()
        frames.append(atoms)
    path = tmp_path / "data.xyz"
    ase.io.write(path, frames)
    return str(path)


def test_errors_and_its_former_name_eval(labelled, capsys):
    pot, _ = example_files()
    assert main(["errors", pot, labelled]) == 0
    errors = capsys.readouterr()
    assert f"{pot} on {labelled}" in errors.out and errors.err == ""
    assert main(["eval", pot, labelled]) == 0
    former = capsys.readouterr()
    assert former.out == errors.out
    assert former.err.count("\n") == 1 and "replaced by 'ace-uq errors'" in former.err


def test_progress_bar_writes_its_final_state_only_when_enabled():
    stream = io.StringIO()
    with progress_bar(5, "work", enabled=True, stream=stream, unit="step") as bar:
        for _ in range(5):
            bar.update(1)
    assert "work: 100%" in stream.getvalue() and "5/5" in stream.getvalue()
    quiet = io.StringIO()
    with progress_bar(5, "work", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""


def test_cut_out_cluster_is_the_flagged_atom_and_its_neighbours():
    frame = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    values = np.zeros(len(frame))
    values[0] = 5.0
    frame.info.update(step=7, uq_value=5.0, max_gamma=5.0, ace_energy=-1.0)
    cluster = cut_out_cluster(frame, values, threshold=2.0, cutoff=3.0, vacuum=6.0, measure="gamma")
    assert len(cluster) == 13 and not cluster.pbc.any()            # the atom and its 12 nearest neighbours
    assert cluster.arrays["flagged"].sum() == 1 and cluster.arrays["source_index"][0] == 0
    assert cluster.arrays["gamma"][0] == 5.0
    assert cluster.info["cut_out"] and cluster.info["step"] == 7 and cluster.info["max_gamma"] == 5.0
    assert "ace_energy" not in cluster.info                          # the model's energy is the frame's
    distances = np.linalg.norm(cluster.positions[1:] - cluster.positions[0], axis=1)
    assert distances == pytest.approx(np.full(12, 3.61 / np.sqrt(2)))
    assert cluster.cell.lengths().min() >= 12.0                      # 6 A of vacuum on each side
    # nothing above the threshold: the frame itself
    assert cut_out_cluster(frame, values, 10.0, 3.0, 6.0, "gamma") is frame


def _imports(path: Path):
    """(module, names) of every ``from module import names`` in ``path``, relative modules resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            yield module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_nothing_outside_the_cli_imports_it():
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for module, names in _imports(path):
            assert not module.startswith("ace_uq_calc.cli"), f"{path} imports {module}"
            assert not (module == "ace_uq_calc" and "cli" in names), f"{path} imports ace_uq_calc.cli"


@pytest.mark.parametrize("package", ["cli", "monitor"])
def test_no_private_name_is_imported_across_modules(package):
    for path in (PACKAGE / package).rglob("*.py"):
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path} imports {private} from {module}"
