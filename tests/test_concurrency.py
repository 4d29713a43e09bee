"""Thread safety and Numba-cache safety.

* Two calculators used at the same time from two Python threads give exactly the results they give
  one after the other (the parallel kernels run under a thread-safe Numba threading layer).
* ``ace_uq_calc.kernels`` selects the layer 'threadsafe' (TBB if installed, else OpenMP): after a
  call, ``numba.threading_layer()`` must not be 'workqueue', which is not thread-safe.
* Two fresh processes that start together and compile into the same empty NUMBA_CACHE_DIR both
  succeed with identical energies (slow: both compile); the same with a warm cache (fast).
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numba
import numpy as np
import pytest
from ase.build import bulk
from conftest import PROJECT_ROOT, fixture_file

from ace_uq_calc import ACECalculator, ActiveSet
from ace_uq_calc.model.basis import load_basis


def _structures(seed, count, symbol, size, lattice):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        atoms = bulk(symbol, lattice, a=4.05 if lattice == "fcc" else 3.2, cubic=True) * size
        atoms.positions += rng.normal(scale=0.15, size=atoms.positions.shape)
        if symbol == "Al":
            atoms.symbols[rng.random(len(atoms)) < 0.4] = "Ni"
        frames.append(atoms)
    return frames


def _evaluate_all(calc, frames, start=None):
    if start is not None:
        start.wait()
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append((atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy(),
                    calc.results["gamma"].copy()))
    return out


def _assert_same(a, b):
    for (e1, f1, s1, g1), (e2, f2, s2, g2) in zip(a, b, strict=True):
        assert e1 == pytest.approx(e2, rel=1e-12, abs=1e-12)
        assert np.allclose(f1, f2, rtol=1e-12, atol=1e-12)
        assert np.allclose(s1, s2, rtol=1e-12, atol=1e-14)
        assert np.allclose(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("setup", ["shared basis", "separate potentials"])
def test_two_calculators_in_two_threads_match_serial_results(setup):
    alni = load_basis(fixture_file("AlNi_fs.yaml"))
    active = ActiveSet.load(fixture_file("AlNi_fs.asi"), alni.nfunc)
    calc_a = ACECalculator(alni, active_set=active)
    frames_a = _structures(1, 6, "Al", (2, 2, 2), "fcc")
    if setup == "shared basis":            # one ACEBasis and one ActiveSet object behind both calculators
        calc_b = ACECalculator(alni, active_set=active)
        frames_b = _structures(2, 6, "Al", (3, 2, 2), "fcc")
    else:
        calc_b = ACECalculator(str(PROJECT_ROOT / "ace_uq_calc" / "data" / "Cu_example.yaml"),
                               active_set=str(PROJECT_ROOT / "ace_uq_calc" / "data" / "Cu_example.asi"))
        frames_b = _structures(3, 6, "Cu", (3, 3, 2), "fcc")
    serial_a = _evaluate_all(calc_a, frames_a)
    serial_b = _evaluate_all(calc_b, frames_b)

    for _ in range(3):
        start = threading.Barrier(2)
        outcome = {}
        errors = []

        def run(name, calc, frames):
            try:
                outcome[name] = _evaluate_all(calc, frames, start)
            except BaseException as exc:        # re-raised in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=("a", calc_a, frames_a)),
                   threading.Thread(target=run, args=("b", calc_b, frames_b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a thread hangs"
        if errors:
            raise errors[0]
        _assert_same(outcome["a"], serial_a)
        _assert_same(outcome["b"], serial_b)


def test_threading_layer_is_thread_safe():
    calc = ACECalculator(load_basis(fixture_file("AlNi_fs.yaml")))
    atoms = _structures(4, 1, "Al", (2, 2, 2), "fcc")[0]
    atoms.calc = calc
    atoms.get_potential_energy()
    layer = numba.threading_layer()
    assert layer != "workqueue"
    if "NUMBA_THREADING_LAYER" not in os.environ:
        assert numba.config.THREADING_LAYER == "threadsafe"
        assert layer in ("tbb", "omp")


_CHILD = textwrap.dedent("""
    import json, sys, time
    start = time.perf_counter()
    import numba, numpy as np
    from ase.build import bulk
    from ace_uq_calc import ACECalculator
    data = sys.argv[1]
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.positions += np.random.default_rng(0).normal(scale=0.1, size=atoms.positions.shape)
    atoms.calc = ACECalculator(data + "/Cu_example.yaml", active_set=data + "/Cu_example.asi")
    energy = atoms.get_potential_energy()
    print(json.dumps({"energy": energy.hex(), "forces": atoms.get_forces().sum(),
                      "max_gamma": atoms.calc.results["max_gamma"].hex(),
                      "layer": numba.threading_layer(), "seconds": time.perf_counter() - start}))
""")


def _run_pair(cache_dir):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    data = str(PROJECT_ROOT / "ace_uq_calc" / "data")
    processes = [subprocess.Popen([sys.executable, "-c", _CHILD, data], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT)
                 for _ in range(2)]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert outputs[0]["energy"] == outputs[1]["energy"]
    assert outputs[0]["max_gamma"] == outputs[1]["max_gamma"]
    assert all(o["layer"] != "workqueue" for o in outputs)
    return outputs


@pytest.mark.slow
def test_two_processes_compiling_into_one_empty_cache(tmp_path):
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    start = time.perf_counter()
    outputs = _run_pair(cache)
    assert any(cache.rglob("*.nbi")), "the processes wrote no cache index"
    # and a third process then loads that cache and agrees
    again = _run_pair(cache)
    assert again[0]["energy"] == outputs[0]["energy"]
    print(f"compiling pair {time.perf_counter() - start:.1f} s", outputs)


def test_two_processes_starting_together_with_a_warm_cache():
    """The package's own cache (populated by this test session's calls): two processes start together,
    load it concurrently and agree bit for bit."""
    calc = ACECalculator(str(PROJECT_ROOT / "ace_uq_calc" / "data" / "Cu_example.yaml"))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = calc
    atoms.get_potential_energy()          # make sure this process has compiled (and cached) the kernels
    outputs = _run_pair(None)
    print(outputs)
