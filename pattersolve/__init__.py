"""pattersolve: electron density from a Patterson map.

MTZ (or mmCIF / SHELX) amplitudes in; a trained 3D U-net prediction refined by
projection phase retrieval out, as a CCP4 map and a phased MTZ.

Heavy dependencies (torch, onnxruntime) are imported lazily by the modules that
need them, so ``import pattersolve`` and ``pattersolve --help`` stay fast.
"""

__version__ = "0.1.0"
PROGRAM = "pattersolve"
