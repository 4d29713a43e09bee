"""``ace-uq md`` and ``ace-uq relax`` end to end on tiny runs of the bundled example model."""
import json

import ase.io
import pytest
from ase.build import bulk

from ace_uq_calc.cli import EXIT_HALTED, build_parser, main
from ace_uq_calc.demo import example_files


@pytest.fixture(scope="module")
def model():
    return example_files()


@pytest.fixture()
def structure(tmp_path):
    path = tmp_path / "cu.xyz"
    ase.io.write(path, bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)))
    return str(path)


def read_summary(outdir):
    with open(outdir / "summary.json") as handle:
        return json.load(handle)


def test_md_end_to_end(model, structure, tmp_path, capsys):
    pot, asi = model
    out = tmp_path / "md"
    rc = main(["md", pot, "--active-set", asi, "--structure", structure, "--temperature", "300",
               "--steps", "12", "--timestep", "2", "--interval", "5", "--seed", "1", "-o", str(out)])
    assert rc == 0
    summary = read_summary(out)
    assert summary["steps_run"] == 12 and summary["steps_requested"] == 12
    assert summary["halted"] is False and summary["status"] == "completed"
    assert summary["n_flags"] == 0 and 0 < summary["max_measure"] < 2
    assert summary["simulated_time_fs"] == pytest.approx(24.0)
    frames = ase.io.read(out / "trajectory.xyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 12]   # every interval + the last step
    assert [f.info["time_fs"] for f in frames] == pytest.approx([0, 10, 20, 24])
    assert frames[0].arrays["gamma"].shape == (32,)
    assert not (out / "flagged.xyz").exists() and "flagged" not in summary["files"]
    assert len(ase.io.read(out / "final.xyz")) == 32
    captured = capsys.readouterr()
    assert "12 of 12 steps; completed" in captured.out and "max gamma" in captured.out
    assert "md: 100%" in captured.err and "12/12" in captured.err  # the progress bar
    # a second run into the same directory refuses to clobber it
    rc = main(["md", pot, "--active-set", asi, "--structure", structure, "--temperature", "300",
               "--steps", "2", "--timestep", "2", "-o", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_md_halts_and_flags(model, structure, tmp_path, capsys):
    pot, asi = model
    out = tmp_path / "md"
    # the perfect crystal has max gamma ~0.77: a halt threshold of 0.5 stops at step 0
    rc = main(["md", pot, "--active-set", asi, "--structure", structure, "--temperature", "300",
               "--steps", "20", "--timestep", "2", "--flag", "0.4", "--halt", "0.5", "--thermostat", "nve",
               "-o", str(out), "--quiet"])
    assert rc == EXIT_HALTED
    summary = read_summary(out)
    assert summary["halted"] is True and summary["halt_step"] == 0 and summary["steps_run"] == 0
    assert "halt threshold 0.5" in summary["halt_reason"]
    assert summary["n_flags"] == 1 and summary["flag_threshold"] == 0.4
    flagged = ase.io.read(out / "flagged.xyz", index=":")
    assert len(flagged) == 1 and flagged[0].info["halted"]
    assert "HALTED" in capsys.readouterr().out


def test_relax_with_cell_end_to_end(model, tmp_path, capsys):
    pot, asi = model
    path = tmp_path / "compressed.xyz"
    ase.io.write(path, bulk("Cu", "fcc", a=3.50, cubic=True).repeat((2, 2, 2)))   # converges in ~5 steps
    out = tmp_path / "relax"
    rc = main(["relax", pot, "--active-set", asi, "--structure", str(path), "--cell", "--fmax", "0.02",
               "--steps", "80", "--optimizer", "BFGS", "-o", str(out)])
    assert rc == 0
    summary = read_summary(out)
    assert summary["converged"] is True and summary["status"] == "converged" and summary["cell"] is True
    assert summary["final_fmax_eV_per_A"] < 0.02 and not summary["halted"]
    final = ase.io.read(out / "final.xyz")
    # from 7.00 to twice the bundled model's lattice constant (fitted to PBE Cu data: a = 3.635 A)
    assert final.cell.lengths() == pytest.approx([7.27] * 3, abs=0.02)
    frames = ase.io.read(out / "trajectory.xyz", index=":")
    assert len(frames) == summary["steps_run"] + 1 and "time_fs" not in frames[0].info
    assert "converged" in capsys.readouterr().out


def test_relax_fire_without_cell(model, structure, tmp_path):
    pot, asi = model
    out = tmp_path / "relax"
    rc = main(["relax", pot, "--active-set", asi, "--structure", structure, "--optimizer", "FIRE",
               "--steps", "3", "-o", str(out), "--quiet"])
    assert rc == 0
    summary = read_summary(out)
    assert summary["optimizer"] == "FIRE" and summary["cell"] is False and summary["steps_run"] <= 3


@pytest.mark.parametrize("extra, message", [
    (["--measure", "forces_dev"], "not supported yet"),
    (["--measure", "error"], "needs --error-calibration FILE"),
    (["--ensemble", "other.yaml"], "other.yaml: cannot read potential file"),
])
def test_unsupported_measures_give_clear_errors(model, structure, tmp_path, capsys, extra, message):
    pot, asi = model
    out = tmp_path / "x"
    rc = main(["md", pot, "--active-set", asi, "--structure", structure, "--temperature", "300",
               "--steps", "2", "--timestep", "2", "-o", str(out)] + extra)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_gamma_needs_an_active_set(model, structure, tmp_path, capsys):
    pot, _ = model
    rc = main(["relax", pot, "--structure", structure, "-o", str(tmp_path / "x")])
    assert rc == 2 and "--active-set" in capsys.readouterr().err


def test_existing_subcommands_are_intact():
    parser = build_parser()
    for argv in (["demo"], ["info", "p.yaml"], ["evaluate", "p.yaml", "s.xyz"],
                 ["activeset", "p.yaml", "t.xyz", "-o", "p.asi"]):
        assert parser.parse_args(argv).command == argv[0]


def test_md_halts_on_the_calibrated_error_estimate(model, structure, tmp_path):
    """--measure error with --error-calibration: the monitor watches forces_error_estimate (eV/A), the
    calibrated map of gamma; a halt threshold below the map's value at the crystal's gamma stops at step 0."""
    import numpy as np

    from ace_uq_calc.uncertainty.calibration import fit_error_calibration

    pot, asi = model
    rng = np.random.default_rng(0)
    u = 10 ** rng.uniform(-1, 1, 500)
    cal = fit_error_calibration(u, 0.05 * u, "gamma")            # expected error 0.05 eV/A at gamma = 1
    cal_path = tmp_path / "cal.json"
    cal.save(cal_path)
    out = tmp_path / "md"
    rc = main(["md", pot, "--active-set", asi, "--structure", structure, "--temperature", "300",
               "--steps", "10", "--timestep", "2", "--measure", "error", "--error-calibration", str(cal_path),
               "--halt", "0.001", "--thermostat", "nve", "-o", str(out), "--quiet"])
    assert rc == EXIT_HALTED
    summary = read_summary(out)
    assert summary["halted"] and summary["steps_run"] == 0
    frame = ase.io.read(out / "trajectory.xyz", index=0)
    estimate = frame.arrays["forces_error_estimate"]
    from ace_uq_calc import ACECalculator

    check = frame.copy()
    check.calc = ACECalculator(pot, active_set=asi)
    check.get_forces()
    assert np.allclose(estimate, cal.predict(check.calc.results["gamma"]), rtol=1e-6)
    assert estimate.max() > 0.001
