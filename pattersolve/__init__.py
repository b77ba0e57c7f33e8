"""pattersolve: electron density from a Patterson map.

MTZ (or mmCIF / SHELX) amplitudes in; phases from a trained 3D network refined by projection
phase retrieval, or from charge flipping at atomic resolution, out as a CCP4 map and a phased
MTZ.

>>> import pattersolve
>>> s = pattersolve.phase("share/examples/alaala_1akz.mtz", method="classical", starts=1)
>>> s.confident is None                  # P1 data: no symmetry to check the result against
True

Heavy dependencies (torch, onnxruntime) are imported lazily by the modules that need them,
so ``import pattersolve`` and ``pattersolve --help`` stay fast.
"""

__version__ = "0.1.0"
PROGRAM = "pattersolve"

from .api import METHODS, Solution, phase  # noqa: E402
from .errors import ExitCode, PattersolveError  # noqa: E402
from .reflections import Reflections, read_reflections  # noqa: E402

__all__ = ["METHODS", "ExitCode", "PattersolveError", "Reflections", "Solution", "phase",
           "read_reflections", "__version__"]
