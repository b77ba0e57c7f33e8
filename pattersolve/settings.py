"""Constants in one place: label priorities, default spacings, limits.

Column priorities follow ../shared/docs/CONVENTIONS.md (as cctbx and meteor do).
"""

from __future__ import annotations

# --- reflection columns (MTZ type, then label priority) -----------------------------------
INTENSITY_LABELS: tuple[str, ...] = ("IMEAN", "I", "IOBS", "I-obs")
AMPLITUDE_LABELS: tuple[str, ...] = (
    "F", "FP", "FOBS", "F-obs", "F-obs-filtered", "FMEAN", "FW-F",
)
ANOMALOUS_F_LABELS: tuple[tuple[str, str], ...] = (("F(+)", "F(-)"), ("F+", "F-"))
ANOMALOUS_I_LABELS: tuple[tuple[str, str], ...] = (("I(+)", "I(-)"), ("I+", "I-"))
FREE_LABELS: tuple[str, ...] = (
    "FREE", "RFREE", "FREER", "FreeR_flag", "R-free-flags", "FreeRflag", "R_FREE_FLAGS",
)

# --- resolution / grids --------------------------------------------------------------------
D_MIN_EPS = 1e-6  # subtract from d_min when cutting a sphere so the last shell survives
MAP_SAMPLE_RATE = 3.0  # like CCP4 GRID SAMPLE 3
MAX_GRID_POINTS = 256**3  # refuse bigger grids (memory) with advice
BYTES_PER_GRID_POINT = 64  # rough working-set estimate per point (complex FFTs, copies)

# --- network defaults ----------------------------------------------------------------------
DEFAULT_MODEL = "alaala-10A"

# --- refinement defaults -------------------------------------------------------------------
RAAR_BETA = 0.9
DEFAULT_CYCLES = 300
DEFAULT_STARTS = 4

# --- phasematch ----------------------------------------------------------------------------
N_RESOLUTION_BINS = 10

# --- runtime -------------------------------------------------------------------------------
ENV_MODELS = "PATTERSOLVE_MODELS"  # extra directory searched for models
