"""ace_uq_calc: ACE potentials (pacemaker B-basis .yaml) for ASE with uncertainty estimates."""

__version__ = "0.1.0"
