"""ace_uq_calc: ACE potentials (pacemaker B-basis .yaml) for ASE with uncertainty estimates.

The public names are imported lazily, so that ``import ace_uq_calc.kernels...`` stays light.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "ACECalculator": ("ace_uq_calc.calculator", "ACECalculator"),
    "ACEBasis": ("ace_uq_calc.model.basis", "ACEBasis"),
    "build_basis": ("ace_uq_calc.model.basis", "build_basis"),
    "load_basis": ("ace_uq_calc.model.basis", "load_basis"),
    "PotentialFormatError": ("ace_uq_calc.model.yaml_format", "PotentialFormatError"),
    "read_potential_file": ("ace_uq_calc.model.yaml_format", "read_potential_file"),
    "ActiveSet": ("ace_uq_calc.uncertainty.active_set", "ActiveSet"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        module, attr = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ace_uq_calc' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
