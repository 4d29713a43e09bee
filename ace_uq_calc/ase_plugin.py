"""ASE plugin registration (entry point group ``ase.plugins``).

ASE 3.29 keeps its plugin collection under the private ``ase._4.plugins``; older ASE versions have
no such mechanism. The import is guarded so that this module imports with any ASE, exposing an
empty ``__ase_plugins__`` when the mechanism is missing.
"""
__ase_plugins__ = set()

try:  # pragma: no cover - depends on the installed ASE
    from ase._4.plugins.plugin import CalculatorPlugin
except ImportError:  # ASE without the plugin mechanism
    CalculatorPlugin = None

if CalculatorPlugin is not None:
    __ase_plugins__ = {
        CalculatorPlugin(
            "ace_uq_calc",
            citation="R. Drautz, Phys. Rev. B 99, 014104 (2019); pacemaker B-basis ACE",
            implementation="ace_uq_calc.calculator.ACECalculator",
        )
    }
