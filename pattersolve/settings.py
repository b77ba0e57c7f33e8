"""Constants in one place: label priorities, default spacings, limits.

Column priorities follow docs/conventions.md (as cctbx and meteor do).
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
#: Largest estimated peak memory of a run (``--max-memory``; pattersolve.memory): a share of
#: the machine's memory (or of a container's limit), as ``parse_memory`` reads it. The
#: estimate was within 0.5-2x of the measured peak (BENCHMARKS.md, memory estimate); 80 %
#: leaves the system and other programs room, while a run past the machine's memory would be
#: ended by the kernel (or swap for hours) without a word.
DEFAULT_MAX_MEMORY = "80%"

# --- network defaults ----------------------------------------------------------------------
DEFAULT_MODEL = "alaala-10A"
#: Model choice: the cost of a packed-cell model (trained on cells of any size) in place of
#: the cell-edge mismatch term (sum of |log| edge ratios) of fixed-cell models.
PACKED_MODEL_COST = 0.3

# --- refinement defaults -------------------------------------------------------------------
RAAR_BETA = 0.9
DEFAULT_CYCLES = 600  # RAAR cycles per start (300: 8.3 deg worse, bench_reference --ablate)
DEFAULT_STARTS = 4

# --- phasematch ----------------------------------------------------------------------------
N_RESOLUTION_BINS = 10

# --- rotation average of the network's prediction (pattersolve.rotations) --------------------
#: Relative tolerance on the metric tensor for a rotation to count as a symmetry of the cell.
ROTATION_METRIC_TOLERANCE = 1e-5
#: Rotated Pattersons equal to an earlier one within this (fraction of the map's range) are
#: the same input: a rotation of the data's own symmetry, left out.
ROTATION_SAME_MAP_TOLERANCE = 1e-6
#: Pattersons put through the network per call.
ROTATION_BATCH = 8

# --- runtime -------------------------------------------------------------------------------
ENV_MODELS = "PATTERSOLVE_MODELS"  # extra directory searched for models

# --- phasematch search (pattersolve.phasematch) ----------------------------------------------
#: Map-coefficient pairs (F type, P type) in priority order.
MAP_COEFFICIENT_LABELS: tuple[tuple[str, str], ...] = (
    ("FWT", "PHWT"), ("FC", "PHIC"), ("F-model", "PHIF-model"), ("FC_ALL", "PHIC_ALL"),
    ("2FOFCWT", "PH2FOFCWT"), ("FP", "PHIB"), ("F", "PHI"), ("FOBS", "PHIB"),
)
PHASEMATCH_OVERSAMPLE = 3.0  # origin-search grid points per reflection-grid point, per axis
PHASEMATCH_MAX_GRID_POINTS = 2**22  # cap on the origin-search grid (oversampling shrinks)
PHASEMATCH_PEAKS = 6  # correlation peaks refined per hand

# --- projection refinement (pattersolve.refine) ----------------------------------------------
REFINE_ER_CYCLES = 80  # error-reduction polish after RAAR
REFINE_SHRINKWRAP_EVERY = 20  # iterations between support updates
#: Support = blurred density above this fraction of its max (0.12 with blur to 0.8 A: 9.4 deg
#: worse with noise in packed cells, bench_reference --ablate).
REFINE_SHRINKWRAP_THRESHOLD = 0.15
REFINE_BLUR_START = 1.5  # Gaussian blur (A, sigma) of the first support update
REFINE_BLUR_END = 0.7  # ... and of the last
REFINE_PATTERSON_THRESHOLD = 0.05  # Patterson support: above this fraction of its maximum
#: Measured amplitudes are met to within k * sigma. 0: exactly. With 10 % noise in packed cells
#: k = 1 ends further from the truth (from the true phases: 14.0 against 12.5 deg mean after
#: error reduction; from random starts +2.1 deg mean, interval -4.9 to +8.3; validation maps,
#: bench/bench_reference.py --ablate).
REFINE_SIGMA_K = 0.0
#: RAAR's beta falls linearly from RAAR_BETA to this over the last REFINE_ANNEAL_FRACTION of
#: the cycles. With noisy amplitudes there is no exact solution and RAAR at beta 0.9 keeps
#: moving even from the true phases (10 % noise, packed cells: 35 deg mean after 300 cycles,
#: against 19 deg at beta 0.5, which searches worse from random starts). From random starts the
#: falling beta ends 3.5 deg nearer the truth on average than beta 0.9 throughout (interval
#: +0.2 to +6.9; validation maps, bench/bench_reference.py --ablate).
REFINE_BETA_END = 0.5
REFINE_ANNEAL_FRACTION = 0.25
#: With complete data, F000 follows the support (self-consistent, within REFINE_F000_RANGE)
#: or stays at the Patterson estimate (False): with 10 % noise in packed cells the fixed one
#: ends 3.4 deg nearer the truth on average (interval -1.8 to +8.3; validation maps,
#: bench/bench_reference.py --ablate). Where reflections
#: inside the data sphere are missing, which inflate the estimate (2-lowres), it always follows.
REFINE_ADAPT_F000 = False
#: Self-consistent F000 updates stay within these multiples of the Patterson estimate (the
#: estimate is inflated by noise and missing reflections, rarely too low).
REFINE_F000_RANGE = (0.5, 1.1)
#: Phase noise (deg, standard deviation) added to the prediction's phases per extra hybrid
#: start: start i gets ``i * HYBRID_NOISE_DEG`` (capped at 90).
HYBRID_NOISE_DEG = 25.0
HYBRID_SUPPORT_BLUR = 1.0  # A: blur of a prediction before it is thresholded into a support
FOM_MIN_PER_BIN = 40  # reflections per sigmaA bin of the figure of merit, at least
FOM_SIGMAA_RANGE = (0.0025, 0.98)  # sigmaA^2 is clipped to this range

# --- charge flipping / ab initio (pattersolve.chargeflip, pattersolve.abinitio) ----------
CF_DELTA_SIGMA = 1.3  # flipping threshold, units of the E-map r.m.s. (best on real data)
CF_WEAK_FRACTION = 0.2  # smallest-E fraction whose phases are shifted by 90 deg
CF_E_MAX = 5.0  # cap on |E| against outliers
CF_N_SHELLS = 20  # resolution shells for the E normalisation
CF_CYCLES = 1000  # maximum flipping cycles per start
CF_STARTS = 4  # the starts of one threshold share CF_STARTS x CF_CYCLES cycles
ATOMIC_D_MIN = 1.2  # charge flipping needs data to at least this resolution (A)
ATOMIC_MAX_VOLUME = 20000.0  # and cells no bigger than this (A^3) for "auto"
PEAK_MIN_DISTANCE = 0.7  # A: peaks closer than this (symmetry included) are merged
PEAKS_MAX = 100  # --peaks: at most this many peaks (unique under the space group)
CF_SAMPLE_RATE = 2.5  # charge-flipping and origin-location grids: about d_min / 2.5 spacing
CF_MIN_CYCLES = 100  # a converged start runs at least this many cycles ...
CF_STOP_AFTER_CONVERGED = 150  # ... and stops this many cycles after it converged
CF_CONVERGED_RATIO = 0.8  # converged: R below this fraction of its plateau (cycles 10-20)
#: A start has stalled when its mean R over the last CF_STALL_WINDOW cycles is less than
#: CF_STALL_GAIN (relative) below the mean over the window before (checked from CF_MIN_CYCLES).
CF_STALL_WINDOW = 100
CF_STALL_GAIN = 0.005
#: A stalled start whose R ended below this fraction of its plateau R has converged too: a
#: partial transition that went no further (heavy atoms).
CF_STALLED_CONVERGED_RATIO = 0.88
#: Thresholds tried in turn (units of the E-map r.m.s.) until a start converges and its peak
#: model fits (R(E) below CF_CONFIDENT_R); after a converged start no further threshold is tried.
CF_DELTAS: tuple[float, ...] = (CF_DELTA_SIGMA, 1.1, 1.5)
CF_MAX_SECONDS = 120.0  # no further threshold is tried after this much time
ATOMIC_MIN_COMPLETENESS = 0.7  # "auto" picks charge flipping only for data this complete
#: Volume per non-hydrogen atom in organic crystals (A^3), Kempster & Lipson's 18 A^3 rule.
VOLUME_PER_ATOM = 18.0
RECYCLE_ITERATIONS = 8  # peak-recycling iterations after charge flipping
RECYCLE_PEAKS_PER_ATOM = 1.2  # peaks recycled per expected atom of the asymmetric unit
RECYCLE_PEAK_DISTANCE = 0.9  # A: recycled peaks closer than this are merged
#: R(E) between the data and the peak model below which a solution counts as confident.
CF_CONFIDENT_R = 0.40
#: Mean symmetry agreement (correlation, pattersolve.symmetry) below which a located origin is
#: doubtful: charge flipping is then not confident, and another method's solution stays P1.
SYMMETRY_MIN_AGREEMENT = 0.6

# --- hybrid hand-over (pattersolve.refine, first hybrid start) -------------------------------
#: Weight of the prediction in the guided start's first iteration (falls linearly to 0).
HYBRID_GUIDE_WEIGHT = 0.5
#: Fraction of the cycles over which the guide weight falls to 0 (plain ER afterwards).
HYBRID_GUIDE_FRACTION = 2.0 / 3.0
#: The guided start is used (``guided=None``) when the estimated packing is at least this:
#: packed cells, where RAAR leaves even a good prediction's basin (BENCHMARKS.md, hand-over).
#: In open cells it is not needed, and with missing low-resolution data it can hold on to a
#: wrong prediction with a competitive residual (2-lowres, measured).
HYBRID_GUIDE_MIN_PACKING = 0.15
#: With a guided first start, --starts classical starts (random phases, Patterson support, the
#: same as --method classical's) follow it, all in one pool chosen by the amplitude residual:
#: the result's residual is never above refinement from random starts alone.
HYBRID_GUIDED_POOL = True
#: Volume within 1.6 A of an atom per electron of F(000) (A^3/e): fitted on tripeptide cells.
PACKING_PER_ELECTRON = 1.69

# French & Wilson amplitudes from intensities (pattersolve.frenchwilson)
FW_SHELLS = 20  # at most this many equal-count resolution shells for Wilson's Sigma
FW_MIN_PER_SHELL = 50  # and at least this many reflections in each
FW_NODES = 400  # quadrature points in F per reflection
FW_WIDTH = 10.0  # the F grid spans the posterior's mu +- FW_WIDTH sigma in F^2

# The hand (enantiomorph) of a network + refinement solution (pattersolve.solve). Both limits
# were chosen on validation maps (bench_phasing.py --split val --n 60, regimes 1b, 2, 2-noise,
# 2-lowres: with both, the network's hand was the true one on 69 of the 70 maps it passed).
#: Largest weighted phase difference (deg, amplitude-weighted, after origin and hand search)
#: between the refined solution and the network's prediction for the prediction's hand to be
#: taken over; beyond it the prediction was too poor for its hand to mean much.
HAND_MAX_PHASE_DIFFERENCE = 60.0
#: Largest centrosymmetry of the prediction (pattersolve.phases.centrosymmetry) for its hand
#: to count: above it the prediction hedges between the two hands.
HAND_MAX_CENTROSYMMETRY = 0.85
#: The network alone (no refinement to check it against): largest amplitude residual R of the
#: prediction against the measured amplitudes for its hand to be reported. Chosen on the same
#: validation maps: R <= 0.60 kept 68 of the 70 claims in 1b and 2 (all true) and dropped all
#: 68 in 2-noise and 2-lowres, where the network alone is near the random floor (R 0.63-0.83)
#: and its "hand" was the true one 30 times.
HAND_MAX_NETWORK_RESIDUAL = 0.60
#: A P1 solution's free origin (pattersolve.solve.place_in_cell): the planes of least density,
#: those within this fraction of the profile's range above its minimum, go to the cell faces.
ORIGIN_GAP_FRACTION = 0.02

# --- progress of long work (pattersolve.progress) ----------------------------------------------
PROGRESS_DELAY = 3.0  # s: no progress shown for work shorter than this
PROGRESS_EVERY = 10.0  # s: between progress lines in a log (not a terminal)

# --- input checks (pattersolve.formats, pattersolve.reflections) ------------------------------
#: Smallest plausible d (A) of a measured reflection: below it the cell or the index is wrong.
#: d_min = lambda / 2 at best; Ag K-alpha (0.56 A) reaches 0.28 A, and charge-density studies
#: stop near sin(theta)/lambda = 2 A^-1 (d = 0.25 A), where atomic scattering has faded into
#: the noise. 0.2 A (sin(theta)/lambda = 2.5 A^-1) is beyond any X-ray or electron data set.
MIN_D_SPACING = 0.2
#: Smallest plausible cell volume (A^3): one atom. Diamond, the densest packing of atoms in any
#: crystal at ambient pressure, has 5.7 A^3 per atom (a = 3.567 A, 8 atoms).
MIN_CELL_VOLUME = 5.0
#: Largest plausible cell edge (A). Neighbouring reflections lie about lambda / a apart in
#: angle: 1e-4 rad for a = 10000 A at lambda = 1 A, 0.1 mm at 1 m from the crystal, about one
#: detector pixel and less than the spots' own width, so no experiment resolves such a cell
#: (the largest cells measured, of virus crystals, are several times smaller).
MAX_CELL_EDGE = 10000.0
#: Largest |h|, |k|, |l| read from a text file before the cell is checked (beyond int32, the
#: index cannot even be stored; anything near it is a corrupt line).
MAX_READ_INDEX = 2**31 - 1

# --- the Patterson method for heavy atoms (pattersolve.heavy) -------------------------------
PATT_SAMPLE_RATE = 3.0  # Patterson / vector-search grid: about d_min / 3 spacing
PATT_TRIALS = 6  # first heavy-atom sites (distinct Harker vector sets) completed in turn
PATT_MAX_UNKNOWN_SITES = 2  # no formula: 1 .. this many heavy sites per asymmetric unit tried
PATT_SITE_MIN_DISTANCE = 2.0  # A: heavy sites closer than this to a placed one are not tried
PATT_HEAVY_LIGHT_DISTANCE = 1.6  # A: E-map peaks closer to a heavy atom are ripples, not atoms
PATT_CYCLES = 8  # Fourier recycling cycles per trial heavy-atom solution
PATT_RAMP_CYCLES = 3  # light atoms ramp up to the expected count over this many cycles
#: CC(|E_obs|, |E_calc|) of a completed trial at which no further trial is completed.
PATT_SOLVED_CC = 0.80
#: Heavy atoms at random sites, completed the same way: the CC a wrong model reaches on the
#: data (peaks picked from a map with the measured amplitudes fit them whatever the phases).
PATT_DECOYS = 4
#: Confident: CC at least PATT_CONFIDENT_CC and PATT_CONFIDENT_MARGIN above the best decoy.
PATT_CONFIDENT_CC = 0.70
PATT_CONFIDENT_MARGIN = 0.25
