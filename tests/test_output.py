"""CCP4 map and phased MTZ writers: independent validation, columns, atomic writes."""

from __future__ import annotations

import os

import gemmi
import numpy as np
import pytest

from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.fourier import density_map
from pattersolve.output import write_ccp4_map, write_json, write_phased_mtz
from pattersolve.phases import fom_to_hl
from pattersolve.transaction import write_atomic


def test_ccp4_map_validates_with_mrcfile(tmp_path, alaala):
    mrcfile = pytest.importorskip("mrcfile")
    cell = alaala.placement.cell
    rho = density_map(alaala.hkl, alaala.f, (20, 20, 20), cell.volume)
    out = tmp_path / "m.map"
    write_ccp4_map(out, rho, cell, gemmi.SpaceGroup("P 1"), "test map")
    assert mrcfile.validate(str(out), print_file=open(os.devnull, "w"))
    with mrcfile.open(str(out)) as m:
        assert m.header.mode == 2 and int(m.header.ispg) == 1
        assert (m.header.mapc, m.header.mapr, m.header.maps) == (1, 2, 3)
        assert float(m.header.dmax) == pytest.approx(rho.max(), rel=1e-5)
        assert b"pattersolve" in bytes(m.header.label[0])
    g = gemmi.read_ccp4_map(str(out)).grid
    assert np.allclose(np.array(g), rho, atol=1e-5 * abs(rho).max())


def test_phased_mtz_columns_and_round_trip(tmp_path, alaala):
    src = gemmi.Mtz(with_base=True)
    src.set_cell_for_all(alaala.placement.cell)
    src.spacegroup = gemmi.SpaceGroup("P 1")
    ds = src.add_dataset("xtal")
    ds.wavelength = 0.9793
    ds.project_name = "proj"
    amp = np.abs(alaala.f)
    fom = np.full(len(amp), 0.8)
    hl = fom_to_hl(fom, np.angle(alaala.f))
    out = tmp_path / "p.mtz"
    write_phased_mtz(out, src, alaala.hkl, amp, 0.02 * amp, np.zeros(len(amp)), alaala.f,
                     fom, hl, gemmi.SpaceGroup("P 1"), "unit test")
    mtz = gemmi.read_mtz_file(str(out))
    labels = mtz.column_labels()
    for lab in ("FP", "SIGFP", "FreeR_flag", "FWT", "PHWT", "PHIB", "FOM",
                "HLA", "HLB", "HLC", "HLD"):
        assert lab in labels
    types = {c.label: c.type for c in mtz.columns}
    assert types["FWT"] == "F" and types["PHWT"] == "P" and types["FOM"] == "W"
    assert types["HLA"] == "A" and types["FreeR_flag"] == "I"
    assert mtz.datasets[1].wavelength == pytest.approx(0.9793)
    assert "pattersolve" in mtz.history[0]
    phi = np.radians(np.array(mtz.column_with_label("PHWT")))
    assert np.allclose(np.exp(1j * phi), np.exp(1j * np.angle(alaala.f)), atol=1e-4)
    fwt = np.array(mtz.column_with_label("FWT"))
    assert np.allclose(fwt, 0.8 * amp, rtol=1e-5)
    # reciprocalspaceship reads it too, when installed
    rs = pytest.importorskip("reciprocalspaceship")
    ds_rs = rs.read_mtz(str(out))
    assert {"FWT", "PHWT", "PHIB", "FOM", "HLA", "HLD"} <= set(ds_rs.columns)


def test_existing_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "keep.json"
    out.write_text("precious")
    with pytest.raises(PattersolveError) as err:
        write_json(out, {"a": 1})
    assert err.value.exit_code == ExitCode.OUTPUT and "--overwrite" in err.value.fix
    assert out.read_text() == "precious"
    write_json(out, {"a": 1}, overwrite=True)
    assert '"a": 1' in out.read_text()


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "x.bin"

    def boom(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(PattersolveError) as err:  # gemmi reports a full disk this way
        write_atomic(out, boom)
    assert err.value.exit_code == ExitCode.OUTPUT and "disk on fire" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path):
    with pytest.raises(PattersolveError) as err:
        write_json(tmp_path / "missing" / "x.json", {})
    assert err.value.exit_code == ExitCode.OUTPUT
