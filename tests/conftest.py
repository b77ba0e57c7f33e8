"""Shared fixtures: simulated data sets (no ../shared needed) and the shared-data locator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: this test needs the project's shared data (../shared)")
    return p


def tiny_config(shards: Path, **changes):
    """training/configs/tiny.toml on the given shards, with fields replaced."""
    from dataclasses import replace

    from pattersolve_train import train as T

    cfg = T.load_config(REPO / "training" / "configs" / "tiny.toml")
    return replace(cfg, shards=str(shards), **changes)


def checkpoint_tensors(run: Path) -> dict:
    """Every tensor of a run's checkpoint (model, optimiser, RNG)."""
    from pattersolve_train import train as T
    from safetensors.torch import load_file

    return load_file(str(run / T.CHECKPOINT))


@pytest.fixture()
def one_torch_thread():
    """torch on one thread for the test (training tests: deterministic and CI-sized)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def alaala():
    """Exact data of the 1AKZ Ala-Ala fragment in a 10 A cube at 1.5 A."""
    from pattersolve import synthetic

    els, xyz = synthetic.ala_ala()
    return synthetic.simulate_fragment(els, xyz, 1.5)


@pytest.fixture()
def alaala_mtz(tmp_path, alaala):
    """(data.mtz with FP/SIGFP/FreeR_flag, truth.mtz with FC/PHIC)."""
    from pattersolve import synthetic

    rng = np.random.default_rng(1)
    data = tmp_path / "data.mtz"
    truth = tmp_path / "truth.mtz"
    cell = alaala.placement.cell
    synthetic.write_data_mtz(data, cell, alaala.hkl, synthetic.measured_columns(alaala.f, rng))
    synthetic.write_data_mtz(truth, cell, alaala.hkl, synthetic.phase_columns(alaala.f))
    return data, truth


# ---------------------------------------------------------------------------------------------
# training tree (pattersolve_train) fixtures, prefixed train_
# ---------------------------------------------------------------------------------------------
#: Residues 1-6 of chain A of PDB 1a8q (PRO ILE CYS THR THR ARG), heavy atoms only.
TRAIN_1A8Q_RES1_6 = """\
ATOM      1  N   PRO A   1      47.164  16.741 -12.069  1.00 11.68           N
ATOM      2  CA  PRO A   1      46.674  16.560 -13.465  1.00 11.74           C
ATOM      3  C   PRO A   1      45.314  15.861 -13.472  1.00 11.25           C
ATOM      4  O   PRO A   1      44.839  15.529 -12.398  1.00 10.86           O
ATOM      5  CB  PRO A   1      47.745  15.745 -14.168  1.00 15.16           C
ATOM      6  CG  PRO A   1      48.788  15.487 -13.144  1.00 14.88           C
ATOM      7  CD  PRO A   1      48.666  16.591 -12.141  1.00 13.25           C
ATOM      8  N   ILE A   2      44.643  15.878 -14.611  1.00 13.58           N
ATOM      9  CA  ILE A   2      43.285  15.326 -14.729  1.00 13.87           C
ATOM     10  C   ILE A   2      43.265  14.238 -15.789  1.00 13.40           C
ATOM     11  O   ILE A   2      43.806  14.438 -16.891  1.00 15.85           O
ATOM     12  CB  ILE A   2      42.273  16.420 -15.162  1.00 17.06           C
ATOM     13  CG1 ILE A   2      42.189  17.527 -14.117  1.00 18.58           C
ATOM     14  CG2 ILE A   2      40.883  15.858 -15.438  1.00 17.26           C
ATOM     15  CD1 ILE A   2      41.530  17.175 -12.812  1.00 20.12           C
ATOM     16  N   CYS A   3      42.605  13.137 -15.470  1.00 13.41           N
ATOM     17  CA  CYS A   3      42.337  12.094 -16.457  1.00 14.53           C
ATOM     18  C   CYS A   3      40.826  12.131 -16.714  1.00 15.04           C
ATOM     19  O   CYS A   3      40.071  12.132 -15.738  1.00 14.28           O
ATOM     20  CB  CYS A   3      42.710  10.727 -15.865  1.00 15.93           C
ATOM     21  SG  CYS A   3      42.094   9.344 -16.881  1.00 21.87           S
ATOM     22  N   THR A   4      40.418  12.217 -17.972  1.00 14.43           N
ATOM     23  CA  THR A   4      38.960  12.232 -18.222  1.00 15.75           C
ATOM     24  C   THR A   4      38.518  10.796 -18.539  1.00 16.37           C
ATOM     25  O   THR A   4      39.110  10.162 -19.416  1.00 15.57           O
ATOM     26  CB  THR A   4      38.627  13.188 -19.362  1.00 17.36           C
ATOM     27  OG1 THR A   4      39.063  14.513 -19.016  1.00 19.26           O
ATOM     28  CG2 THR A   4      37.128  13.227 -19.630  1.00 19.16           C
ATOM     29  N   THR A   5      37.520  10.317 -17.801  1.00 14.46           N
ATOM     30  CA  THR A   5      37.127   8.920 -17.965  1.00 13.82           C
ATOM     31  C   THR A   5      36.272   8.777 -19.219  1.00 15.68           C
ATOM     32  O   THR A   5      35.809   9.749 -19.809  1.00 15.25           O
ATOM     33  CB  THR A   5      36.359   8.344 -16.774  1.00 14.48           C
ATOM     34  OG1 THR A   5      35.070   8.986 -16.726  1.00 14.71           O
ATOM     35  CG2 THR A   5      37.093   8.586 -15.465  1.00 13.91           C
ATOM     36  N   ARG A   6      35.923   7.511 -19.470  1.00 14.82           N
ATOM     37  CA  ARG A   6      35.033   7.180 -20.580  1.00 18.59           C
ATOM     38  C   ARG A   6      33.669   7.837 -20.460  1.00 19.81           C
ATOM     39  O   ARG A   6      32.949   8.012 -21.464  1.00 22.16           O
ATOM     40  CB  ARG A   6      34.848   5.653 -20.505  1.00 17.74           C
ATOM     41  CG  ARG A   6      34.069   5.269 -19.241  1.00 19.92           C
ATOM     42  CD  ARG A   6      34.398   3.866 -18.737  1.00 19.59           C
ATOM     43  NE  ARG A   6      33.755   3.632 -17.438  1.00 20.06           N
ATOM     44  CZ  ARG A   6      34.232   4.112 -16.293  1.00 20.02           C
ATOM     45  NH1 ARG A   6      35.382   4.767 -16.300  1.00 19.55           N
ATOM     46  NH2 ARG A   6      33.592   3.929 -15.156  1.00 19.70           N
"""


def train_atom_lines(rotation: np.ndarray | None = None) -> list[str]:
    """The six residues as PDB ATOM lines, optionally rotated about their centroid."""
    lines = TRAIN_1A8Q_RES1_6.splitlines()
    xyz = np.array([[float(s[30:38]), float(s[38:46]), float(s[46:54])] for s in lines])
    if rotation is not None:
        c = xyz.mean(0)
        xyz = (xyz - c) @ rotation.T + c
    return [f"{s[:30]}{x:8.3f}{y:8.3f}{z:8.3f}{s[54:]}" for s, (x, y, z) in zip(lines, xyz,
                                                                               strict=True)]


def train_write_entries(directory: Path, ids: list[str], seed: int = 0) -> None:
    """Write one PDB file per id: the six residues in a random orientation each."""
    from pattersolve.simulate import random_rotation

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for ident in ids:
        text = "\n".join(train_atom_lines(random_rotation(rng))) + "\nEND\n"
        (directory / f"{ident}.pdb").write_text(text)


def train_ids(n: int, prefix: str = "9") -> list[str]:
    """Fake PDB ids ``9a00``, ``9a01``, ..."""
    return [f"{prefix}a{i:02d}" for i in range(n)]


@pytest.fixture(scope="session")
def train_synthetic_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of 40 synthetic entries with split files (30 train, 5 val, 5 test)."""
    root = tmp_path_factory.mktemp("train_source")
    ids = train_ids(40)
    train_write_entries(root / "pdb", ids)
    (root / "pdb" / "x_split_train.txt").write_text("\n".join(ids[:30]) + "\n")
    (root / "pdb" / "x_split_val.txt").write_text("\n".join(ids[30:35]) + "\n")
    (root / "pdb" / "x_split_test.txt").write_text("\n".join(ids[35:]) + "\n")
    return root / "pdb"


@pytest.fixture(scope="session")
def train_shards(train_synthetic_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ala-Ala shards from the synthetic entries: 5 fragments per entry."""
    from pattersolve_train.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("train_shards") / "alaala"
    prepare(train_synthetic_source, out, PrepareOptions(dialanine=True, entries_per_shard=8),
            progress=False)
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print how many fuzz cases (tests/test_fuzz.py) ran, by outcome, when any did."""
    counts: dict[str, int] = {}
    for outcome, reports in terminalreporter.stats.items():
        for rep in reports:
            if ("test_fuzz.py::test_fuzz" in getattr(rep, "nodeid", "")
                    and getattr(rep, "when", "") == "call"):
                counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        terminalreporter.write_line(f"fuzz cases: {sum(counts.values())} ({detail})")
