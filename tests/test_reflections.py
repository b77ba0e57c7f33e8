"""Column detection matrix, anomalous merging, P1 expansion, cuts and bad data."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from pattersolve import synthetic
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.fourier import is_half_sphere, miller_sphere
from pattersolve.frenchwilson import french_wilson
from pattersolve.reflections import expand_to_p1_half, read_reflections


@pytest.fixture()
def data(alaala):
    amp = np.abs(alaala.f)
    return alaala.placement.cell, alaala.hkl, amp


def _write(tmp_path, cell, hkl, cols, name="x.mtz", sg=None):
    p = tmp_path / name
    synthetic.write_data_mtz(p, cell, hkl, cols, spacegroup=sg)
    return p


def test_amplitudes_only(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("FP", "F", amp), ("SIGFP", "Q", amp * 0.02)])
    r = read_reflections(p)
    assert r.summary["columns"]["value"] == ["FP"] and r.summary["columns"]["sigma"] == ["SIGFP"]
    assert r.summary["patterson_from"] == "amplitudes squared"
    assert np.allclose(r.intensity, r.amplitude**2)
    assert np.allclose(r.amplitude, amp, rtol=1e-6)


def test_intensities_only(tmp_path, data):
    cell, hkl, amp = data
    inten = amp**2
    inten[:5] = -1.0  # negative measured intensities
    p = _write(tmp_path, cell, hkl, [("IMEAN", "J", inten), ("SIGIMEAN", "Q", 0.05 * amp**2 + 1)])
    r = read_reflections(p, french_wilson=False)
    assert r.summary["columns"]["kind"] == "intensity"
    assert r.summary["columns"]["sigma"] == ["SIGIMEAN"]
    assert r.summary["amplitudes_from"] == "sqrt(max(I, 0))"
    assert (r.intensity >= 0).all() and (r.amplitude >= 0).all()
    assert any("negative intensities" in n for n in r.summary["notes"])
    assert np.allclose(r.amplitude[5:], amp[5:], rtol=1e-5)
    assert (r.amplitude[:5] == 0).all()


def test_intensities_become_french_wilson_amplitudes(tmp_path, data):
    """By default amplitudes from intensities are French & Wilson's; the Patterson keeps I."""
    cell, hkl, amp = data
    inten, sig = amp**2, 0.05 * amp**2 + 1
    inten[:5] = -1.0
    p = _write(tmp_path, cell, hkl, [("IMEAN", "J", inten), ("SIGIMEAN", "Q", sig)])
    r = read_reflections(p)
    assert r.summary["amplitudes_from"] == "french-wilson"
    assert any("French & Wilson" in n for n in r.summary["notes"])
    f_ref, sd_ref = french_wilson(hkl, inten, sig, cell, gemmi.SpaceGroup("P 1"))
    np.testing.assert_allclose(r.amplitude, f_ref, rtol=1e-6)  # P1: one row per reflection
    np.testing.assert_allclose(r.sigma, sd_ref, rtol=1e-6)
    assert (r.amplitude[:5] > 0.1).all()  # negative I: a small positive amplitude, not 0
    # strong reflections stay near sqrt(I), less the prior's pull sigma^2 / Sigma on those far
    # out in Wilson's tail (a dipeptide in an empty cube has many)
    strong = inten > 10 * sig
    assert strong.sum() > 100 and np.allclose(r.amplitude[strong], amp[strong], rtol=0.03)
    assert np.median(r.amplitude[strong] / amp[strong]) > 0.99
    assert np.allclose(r.intensity[5:], inten[5:], rtol=1e-6)
    assert (r.asu_amplitude > 0).all() and (r.asu_sigma > 0).all()


def test_intensities_without_sigmas_fall_back_to_sqrt(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("IMEAN", "J", amp**2)])
    r = read_reflections(p)
    assert r.summary["amplitudes_from"] == "sqrt(max(I, 0))"
    assert any("no sigmas" in n for n in r.summary["notes"])
    assert np.allclose(r.amplitude, amp, rtol=1e-5) and r.sigma is None


def test_both_prefers_intensity_for_patterson_and_keeps_amplitudes(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("FP", "F", amp), ("SIGFP", "Q", amp * 0.02),
                                     ("I", "J", 1.1 * amp**2), ("SIGI", "Q", amp)])
    r = read_reflections(p)
    assert r.summary["columns"]["value"] == ["I"]
    assert r.summary["columns"]["amplitude"] == "FP"
    assert r.summary["patterson_from"] == "intensities"
    assert np.allclose(r.intensity, 1.1 * amp**2, rtol=1e-5)
    assert np.allclose(r.amplitude, amp, rtol=1e-6)


def test_missing_amplitudes_come_from_the_intensities(tmp_path, data):
    cell, hkl, amp = data
    fp = amp.copy()
    fp[:4] = np.nan
    sig_i = 0.05 * amp**2 + 1
    p = _write(tmp_path, cell, hkl, [("FP", "F", fp), ("SIGFP", "Q", amp * 0.02),
                                     ("I", "J", amp**2), ("SIGI", "Q", sig_i)])
    r = read_reflections(p)
    assert r.summary["amplitudes_from"] == "file"
    assert any("4 reflections without FP" in n and "french-wilson" in n
               for n in r.summary["notes"])
    f_fw, sd_fw = french_wilson(hkl, amp**2, sig_i, cell, gemmi.SpaceGroup("P 1"))
    np.testing.assert_allclose(r.amplitude[:4], f_fw[:4], rtol=1e-6)
    np.testing.assert_allclose(r.sigma[:4], sd_fw[:4], rtol=1e-6)
    np.testing.assert_allclose(r.amplitude[4:], amp[4:], rtol=1e-6)
    np.testing.assert_allclose(r.sigma[4:], amp[4:] * 0.02, rtol=1e-5)


def test_anomalous_only_merged_to_mean(tmp_path, data):
    cell, hkl, amp = data
    plus, minus = amp * 1.02, amp * 0.98
    minus[:3] = np.nan
    p = _write(tmp_path, cell, hkl, [("F(+)", "G", plus), ("SIGF(+)", "L", amp * 0.02),
                                     ("F(-)", "G", minus), ("SIGF(-)", "L", amp * 0.02)])
    r = read_reflections(p)
    assert r.summary["columns"]["kind"] == "anomalous-amplitude"
    assert r.summary["columns"]["value"] == ["F(+)", "F(-)"]
    assert np.allclose(r.amplitude[3:], amp[3:], rtol=1e-5)
    assert np.allclose(r.amplitude[:3], plus[:3], rtol=1e-5)  # only F(+) measured
    assert any("anomalous" in n for n in r.summary["notes"])


def test_ambiguous_columns_list_candidates_and_flag(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("FA", "F", amp), ("FB", "F", amp)])
    with pytest.raises(PattersolveError) as err:
        read_reflections(p)
    assert err.value.exit_code == ExitCode.COLUMNS
    assert "FA" in err.value.message and "FB" in err.value.message
    assert "--f-label" in err.value.fix


def test_explicit_labels_resolve_ambiguity(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("FA", "F", amp), ("FB", "F", 2 * amp),
                                     ("SIGFB", "Q", amp * 0.1)])
    r = read_reflections(p, f_label="FB")
    assert r.summary["columns"]["value"] == ["FB"] and r.summary["columns"]["sigma"] == ["SIGFB"]
    assert np.allclose(r.amplitude, 2 * amp, rtol=1e-6)
    with pytest.raises(PattersolveError) as err:
        read_reflections(p, f_label="NOPE")
    assert err.value.exit_code == ExitCode.COLUMNS and "FA" in err.value.message


def test_priority_picks_fp_over_fc(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("FC", "F", amp * 3), ("FP", "F", amp)])
    assert read_reflections(p).summary["columns"]["value"] == ["FP"]


def test_no_usable_column(tmp_path, data):
    cell, hkl, amp = data
    p = _write(tmp_path, cell, hkl, [("PHI", "P", amp)])
    with pytest.raises(PattersolveError) as err:
        read_reflections(p)
    assert err.value.exit_code == ExitCode.COLUMNS


def test_nan_negative_sigma_and_all_nan(tmp_path, data):
    cell, hkl, amp = data
    a = amp.copy()
    a[:4] = np.nan
    s = amp * 0.02
    s[4:6] = 0.0
    p = _write(tmp_path, cell, hkl, [("FP", "F", a), ("SIGFP", "Q", s)])
    r = read_reflections(p)
    assert r.summary["reflections_used"] == len(hkl) - 6
    assert any("sigma <= 0" in n for n in r.summary["notes"])
    q = _write(tmp_path, cell, hkl, [("FP", "F", np.full(len(hkl), np.nan))], name="nan.mtz")
    with pytest.raises(PattersolveError) as err:
        read_reflections(q)
    assert err.value.exit_code == ExitCode.DATA


def test_resolution_cut_and_completeness(tmp_path, data):
    cell, hkl, amp = data
    keep = np.random.default_rng(0).random(len(hkl)) < 0.8
    p = _write(tmp_path, cell, hkl[keep], [("FP", "F", amp[keep])])
    r = read_reflections(p, d_min=2.0)
    assert r.d.min() >= 2.0 - 1e-6
    assert 0.7 < r.summary["completeness"] < 0.9
    assert r.summary["resolution"][1] >= 2.0 - 1e-3


def test_p1_expansion_p212121_matches_gemmi_and_drops_absences(tmp_path):
    cell = gemmi.UnitCell(11, 13, 17, 90, 90, 90)
    sg = gemmi.SpaceGroup("P 21 21 21")
    hkl = miller_sphere(cell, 2.5, half=False)
    asu = gemmi.ReciprocalAsu(sg)
    hkl = np.array([h for h in hkl if asu.is_in([int(x) for x in h])])
    vals = np.random.default_rng(0).uniform(1, 100, len(hkl))
    p = _write(tmp_path, cell, hkl, [("FP", "F", vals)], sg=sg)
    r = read_reflections(p)
    absent = sg.operations().systematic_absences(hkl.astype(np.int32))
    assert r.summary["reflections_used"] == int((~absent).sum())
    mtz = gemmi.read_mtz_file(str(p))
    mtz.expand_to_p1()
    gh = mtz.make_miller_array()
    gv = np.array(mtz.column_with_label("FP"))
    gabs = gemmi.SpaceGroup("P 21 21 21").operations().systematic_absences(gh.astype(np.int32))
    gh, gv = gh[~gabs], gv[~gabs]
    gh = np.where(is_half_sphere(gh)[:, None], gh, -gh)
    table = {tuple(h): v for h, v in zip(gh.tolist(), gv, strict=True)}
    assert len(table) == len(r.hkl)
    assert all(table[tuple(h)] == pytest.approx(v, rel=1e-6)
               for h, v in zip(r.hkl.tolist(), r.amplitude, strict=True))


@pytest.mark.parametrize("name", ["P 31 2 1", "C 1 2 1", "I 41"])
def test_expansion_other_groups(name):
    sg = gemmi.SpaceGroup(name)
    cell = (gemmi.UnitCell(20, 20, 30, 90, 90, 120) if "3" in name
            else gemmi.UnitCell(20, 22, 25, 90, 100 if name.startswith("C") else 90, 90))
    hkl = miller_sphere(cell, 3.0, half=False)
    asu = gemmi.ReciprocalAsu(sg)
    hkl = np.array([h for h in hkl if asu.is_in([int(x) for x in h])])
    hkl = hkl[~sg.operations().systematic_absences(hkl.astype(np.int32))]
    vals = np.arange(len(hkl), dtype=float)
    ph, (pv,) = expand_to_p1_half(hkl, [vals], sg)
    assert is_half_sphere(ph).all()
    assert len(np.unique(ph, axis=0)) == len(ph)
    # every P1 index maps back to its unique reflection
    for h, v in zip(ph[:200], pv[:200], strict=True):
        back = [i for i, k in enumerate(hkl)
                if any((np.array(op.apply_to_hkl([int(x) for x in k])) == s * h).all()
                       for op in sg.operations().sym_ops for s in (1, -1))]
        assert int(v) in back


def test_missing_and_not_mtz(tmp_path):
    with pytest.raises(PattersolveError) as err:
        read_reflections(tmp_path / "nope.mtz")
    assert err.value.exit_code == ExitCode.INPUT_MISSING
    bad = tmp_path / "bad.mtz"
    bad.write_text("this is not an MTZ file\n")
    with pytest.raises(PattersolveError) as err:
        read_reflections(bad)
    assert err.value.exit_code == ExitCode.INPUT_FORMAT
