"""The memory estimate and the check that refuses a run before its large arrays exist."""

from __future__ import annotations

import re
import tracemalloc

import gemmi
import numpy as np
import pytest

from pattersolve import memory, settings
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.fourier import miller_sphere
from pattersolve.patterson import cell_grid_shape
from pattersolve.reflections import Reflections

GIB = 2**30


def p1_data(edges: tuple[float, float, float], d_min: float) -> Reflections:
    """Complete P1 data (unit amplitudes) of an orthorhombic cell."""
    cell = gemmi.UnitCell(*edges, 90, 90, 90)
    hkl = miller_sphere(cell, d_min)
    return Reflections.from_arrays(cell, hkl, np.ones(len(hkl)))


def shape_of(refl: Reflections) -> tuple[int, int, int]:
    return cell_grid_shape(refl.cell, refl.spacegroup, refl.hkl, refl.d_min)


def flags_of_command() -> set[str]:
    """Every option of ``pattersolve``, and --max-memory (which the command takes)."""
    from pattersolve.cli import pattersolve_command

    opts = {o for p in pattersolve_command.params for o in (*p.opts, *p.secondary_opts)}
    return opts | {"--max-memory"}


def refusal(*args, **kwargs) -> str:
    with pytest.raises(PattersolveError) as info:
        memory.check_memory(*args, **kwargs)
    assert info.value.exit_code == ExitCode.RESOURCES
    return info.value.one_line()


# --- the estimate -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", memory.METHODS)
def test_estimate_grows_with_the_grid(method):
    kw = {"symmetry_shape": (24, 24, 24), "n_operators": 4, "model_shape": (40, 40, 40),
          "network": memory.Network(256.0, 30 * 2**20), "search_points": 10**5,
          "peak_images": 100}
    sizes = [memory.estimate_peak_bytes((n, n, n), method, n**3 // 10, **kw)
             for n in (32, 64, 128)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[0] > memory.BASE_BYTES
    if method in ("classical", "hybrid"):  # refinement: far above the old guess of 64 B
        assert sizes[2] - sizes[1] > 64 * (128**3 - 64**3)


def test_estimate_counts_starts_symmetry_and_network():
    grid = (64, 64, 64)
    one = memory.estimate_peak_bytes(grid, "classical", 10**4, starts=1)
    four = memory.estimate_peak_bytes(grid, "classical", 10**4, starts=4)
    assert four - one >= 3 * 2 * 8 * 64**3  # a start density and a result per start
    sym = memory.estimate_peak_bytes(grid, "classical", 10**4, starts=1,
                                     symmetry_shape=(54, 54, 54), n_operators=6)
    assert sym > one  # the origin search runs on 8x the points of the symmetry grid
    net = memory.Network(256.0, 30 * 2**20)
    small = memory.estimate_peak_bytes(grid, "network", 10**4, model_shape=(32, 32, 32),
                                       network=net)
    big = memory.estimate_peak_bytes(grid, "network", 10**4, model_shape=(128, 128, 128),
                                     network=net)
    assert big - small > 256 * (128**3 - 32**3)


def test_estimate_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="auto"):
        memory.estimate_peak_bytes((8, 8, 8), "auto", 10)


def test_run_arguments_follow_the_data():
    refl = p1_data((10, 11, 12), 1.5)
    args = memory.run_arguments(refl, "hybrid")
    assert args["n_operators"] == 1 and len(args["model_shape"]) == 3
    assert args["network"].bytes_per_point > 0 and args["search_points"] > 0
    cf = memory.run_arguments(refl, "chargeflip")
    assert cf["peak_images"] >= 2 and "model_shape" not in cf


# --- the check --------------------------------------------------------------------------------
def test_check_passes_and_returns_the_estimate():
    refl = p1_data((10, 10, 10), 1.5)
    est = memory.check_memory(shape_of(refl), "classical", len(refl.hkl), 64 * GIB,
                              reflections=refl)
    assert memory.BASE_BYTES < est < GIB


def test_huge_cell_refused_before_any_large_allocation():
    """A 3000 A cell at 100 A: the cell grid is small, the network's 0.8 A grid is not (a
    393 GiB float64 Patterson once). Nothing grid-sized may be made before the refusal."""
    cell = gemmi.UnitCell(3000, 3000, 3000, 90, 90, 90)
    hkl = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [10, 0, 0], [0, 20, 0], [0, 0, 30],
                    [5, 5, 5]])
    refl = Reflections.from_arrays(cell, hkl, np.ones(len(hkl)))
    tracemalloc.start()
    try:
        shape = shape_of(refl)
        with pytest.raises(PattersolveError) as info:
            memory.check_memory(shape, "hybrid", len(refl.hkl), 8 * GIB, reflections=refl)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.exit_code == ExitCode.RESOURCES
    assert peak < 20 * 2**20
    text = info.value.one_line()
    assert "TiB" in text and "--method classical" in text and "--max-memory" in text
    assert "--d-min" not in text  # the network's grid does not shrink with the resolution


def test_huge_cell_refused_by_the_command(tmp_path, capsys):
    """The same through ``pattersolve``: exit 7, one line, before the network's grid exists."""
    from pattersolve import synthetic
    from pattersolve.cli import main

    cell = gemmi.UnitCell(3000, 3000, 3000, 90, 90, 90)
    hkl = np.array([[h, k, 1] for h in range(4) for k in range(4)])
    data = tmp_path / "huge.mtz"
    synthetic.write_data_mtz(data, cell, hkl, [("FP", "F", np.ones(len(hkl)))])
    tracemalloc.start()
    try:
        with pytest.raises(SystemExit) as exc:
            main([str(data), "-o", str(tmp_path / "o.map"), "--method", "hybrid"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert exc.value.code == int(ExitCode.RESOURCES), err
    assert peak < 50 * 2**20
    line = next(ln for ln in err.splitlines() if ln.startswith("pattersolve: error:"))
    assert "--method classical" in line and "Traceback" not in err
    assert not (tmp_path / "o.map").exists()


def test_advice_names_only_real_options_and_a_d_min_that_fits():
    refl = p1_data((30, 33, 36), 1.0)
    shape = shape_of(refl)
    limit = memory.estimate_peak_bytes(shape, "classical", len(refl.hkl),
                                       **memory.run_arguments(refl, "classical")) // 2
    text = refusal(shape, "classical", len(refl.hkl), limit, reflections=refl)
    assert set(re.findall(r"--[a-z][a-z-]*", text)) <= flags_of_command()
    assert "--grid-spacing" not in text
    d_cut = float(re.search(r"--d-min ([0-9.]+)", text).group(1))
    assert d_cut > refl.d_min
    keep = refl.d >= d_cut - settings.D_MIN_EPS
    cut = Reflections.from_arrays(refl.cell, refl.hkl[keep], refl.amplitude[keep])
    memory.check_memory(shape_of(cut), "classical", len(cut.hkl), limit, reflections=cut)


def test_advice_without_the_data_still_names_real_options():
    text = refusal((512, 512, 512), "hybrid", 10**6, 2 * GIB)
    flags = set(re.findall(r"--[a-z][a-z-]*", text))
    assert "--d-min" in flags and flags <= flags_of_command()


def test_default_limit_comes_from_settings(monkeypatch):
    monkeypatch.setattr(settings, "DEFAULT_MAX_MEMORY", "1M")
    text = refusal((32, 32, 32), "classical", 1000)
    assert "the default, 1M" in text


def test_cell_grid_shape_no_longer_refuses_large_grids():
    cell = gemmi.UnitCell(1500, 1500, 1500, 90, 90, 90)
    hkl = np.array([[1000, 0, 0], [0, 1400, 3]])
    assert np.prod(cell_grid_shape(cell, gemmi.SpaceGroup("P 1"), hkl, 1.07)) > 256**3


# --- sizes as users write them ------------------------------------------------------------------
@pytest.mark.parametrize("text,size", [
    ("8G", 8 * GIB), ("8g", 8 * GIB), ("8GB", 8 * GIB), ("8GiB", 8 * GIB), ("500M", 500 * 2**20),
    ("1.5G", 3 * GIB // 2), ("512k", 512 * 1024), ("2T", 2 * 2**40), ("2048", 2048),
    (" 4 G ", 4 * GIB), (".5G", GIB // 2),
])
def test_parse_memory(text, size):
    assert memory.parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "G", "abc", "8X", "-1G", "0", "0G", "8Gi", "1e9",
                                  "150%", "0%", "8 G B"])
def test_parse_memory_refuses_bad_text(text):
    with pytest.raises(PattersolveError) as info:
        memory.parse_memory(text)
    assert info.value.exit_code == ExitCode.USAGE


def test_parse_memory_percent_of_the_machine():
    total = memory.physical_memory()
    if total is None:
        pytest.skip("this system does not report its memory")
    assert memory.parse_memory("50%") == total // 2
    assert memory.parse_memory(settings.DEFAULT_MAX_MEMORY) == int(total * 0.8)
