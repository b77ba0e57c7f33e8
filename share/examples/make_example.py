"""Regenerate the bundled example (a derived, simulated data set; nothing copied from PDB files).

The Ala-Ala dipeptide of PDB 1AKZ residues 113-114 (a test-split entry, never trained on),
truncated at CB, centred in a 10 A P1 cube (the paper's setup 1b), B = 15 A^2, structure
factors to 1.5 A with IT92 form factors, 3 % Gaussian amplitude noise, 5 % free set.

    python share/examples/make_example.py

writes alaala_1akz.mtz (FP, SIGFP, FreeR_flag: what a user has) and alaala_1akz_truth.mtz
(FC, PHIC: the known answer, for pattersolve-phasematch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pattersolve import synthetic

HERE = Path(__file__).resolve().parent


def main() -> None:
    elements, xyz = synthetic.ala_ala()
    sim = synthetic.simulate_fragment(elements, xyz, d_min=1.5, cell_lengths=(10, 10, 10))
    rng = np.random.default_rng(2023)
    cell = sim.placement.cell
    synthetic.write_data_mtz(HERE / "alaala_1akz.mtz", cell, sim.hkl,
                             synthetic.measured_columns(sim.f, rng, noise=0.03),
                             name="alaala_1akz")
    synthetic.write_data_mtz(HERE / "alaala_1akz_truth.mtz", cell, sim.hkl,
                             synthetic.phase_columns(sim.f), name="alaala_1akz_truth")
    print(f"wrote {len(sim.hkl)} reflections to {HERE}")


if __name__ == "__main__":
    main()
