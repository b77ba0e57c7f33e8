"""Reading reflections: choose columns, merge anomalous pairs, expand to P1, cut resolution.

Every input format becomes a :class:`gemmi.Mtz` in the crystal's space group (MTZ files
directly; mmCIF structure factors and SHELX ``.hkl`` through :mod:`pattersolve.formats`).
Columns are chosen by MTZ type first, then label priority (:mod:`pattersolve.settings`);
ambiguity is an error that lists the candidates and the flag that picks one.

The Patterson takes intensities where the file has them; amplitudes for refinement and the
output come from the file's amplitude column, else from the intensities by French & Wilson
(:mod:`pattersolve.frenchwilson`).

The result, :class:`Reflections`, holds the data as the P1 half-sphere the rest of the
program works on, plus the unique (asymmetric-unit) columns to copy into the output MTZ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import numpy as np

from . import frenchwilson, settings
from .errors import ExitCode, PattersolveError
from .fourier import d_spacings, is_half_sphere, miller_sphere


@dataclass
class ColumnChoice:
    """Which MTZ columns were used, and why."""

    kind: str  # "intensity", "amplitude", "anomalous-intensity", "anomalous-amplitude"
    value: list[str]  # one label, or the (+)/(-) pair
    sigma: list[str] = field(default_factory=list)
    amplitude: str | None = None  # amplitude column used for refinement/output, if any
    sigma_amplitude: str | None = None
    free: str | None = None


@dataclass
class Reflections:
    """Measured data, ready for the Patterson and refinement.

    Attributes
    ----------
    cell, spacegroup
        The crystal's cell and space group.
    hkl
        P1 half-sphere Miller indices ``(n, 3)`` (000 excluded, systematic absences dropped).
    intensity
        ``|F|^2`` estimates for the Patterson (negative measured intensities clipped to 0).
    amplitude
        ``|F|`` for refinement (measured amplitudes, or from intensities by French & Wilson).
    sigma
        Standard uncertainty of ``amplitude`` (``None`` when the input has none).
    free
        Free-set flag per P1 reflection (``None`` when the input has none).
    d
        Resolution of each reflection, Angstrom.
    asu_hkl, asu_amplitude, asu_sigma, asu_free
        The unique reflections in the crystal's space group (for copying FP/SIGFP/FREE).
    summary
        What was read and used, for the log and the JSON summary.
    mtz
        The source MTZ (dataset names, wavelength, history).
    """

    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    hkl: np.ndarray
    intensity: np.ndarray
    amplitude: np.ndarray
    sigma: np.ndarray | None
    free: np.ndarray | None
    d: np.ndarray
    asu_hkl: np.ndarray
    asu_amplitude: np.ndarray
    asu_sigma: np.ndarray | None
    asu_free: np.ndarray | None
    summary: dict[str, Any]
    mtz: gemmi.Mtz | None

    @classmethod
    def from_arrays(cls, cell: gemmi.UnitCell, hkl: np.ndarray, amplitude: np.ndarray,
                    sigma: np.ndarray | None = None) -> Reflections:
        """P1 data held in memory (simulations, benchmarks): half-sphere ``hkl``, ``|F|``."""
        hkl = np.asarray(hkl, dtype=np.int64)
        amplitude = np.asarray(amplitude, dtype=np.float64)
        d = d_spacings(cell, hkl)
        return cls(cell=cell, spacegroup=gemmi.SpaceGroup("P 1"), hkl=hkl,
                   intensity=amplitude**2, amplitude=amplitude, sigma=sigma, free=None, d=d,
                   asu_hkl=hkl, asu_amplitude=amplitude, asu_sigma=sigma, asu_free=None,
                   summary={"format": "arrays", "reflections_p1": len(hkl)}, mtz=None)

    @property
    def d_min(self) -> float:
        """High-resolution limit of the data used."""
        return float(self.d.min())

    @property
    def d_max(self) -> float:
        """Low-resolution limit of the data used."""
        return float(self.d.max())


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_mtz(
    path: str | os.PathLike[str],
    *,
    cell: tuple[float, ...] | None = None,
    spacegroup: str | None = None,
) -> tuple[gemmi.Mtz, str]:
    """Read any supported reflection file into a :class:`gemmi.Mtz`.

    Returns the MTZ and the format name (``"mtz"``, ``"mmcif"``, ``"shelx"``).
    """
    p = Path(path)
    if not p.exists():
        raise PattersolveError(f"input file {p} does not exist", "check the path",
                               ExitCode.INPUT_MISSING)
    if not p.is_file() or not os.access(p, os.R_OK):
        raise PattersolveError(f"input file {p} is not a readable file",
                               "check the path and its permissions", ExitCode.INPUT_MISSING)
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix in (".cif", ".mmcif", ".cif.gz", ".ent"):
        from .formats import read_sf_cif

        mtz, fmt = read_sf_cif(p), "mmcif"
    elif suffix in (".hkl", ".hkl.gz"):
        from .formats import read_shelx_hkl

        mtz, fmt = read_shelx_hkl(p, cell=cell, spacegroup=spacegroup), "shelx"
    else:
        try:
            mtz, fmt = gemmi.read_mtz_file(str(p)), "mtz"
        except (RuntimeError, ValueError, OSError) as exc:
            raise PattersolveError(
                f"{p} is not a readable MTZ file ({exc})",
                "give an MTZ, an mmCIF structure-factor file (.cif) or a SHELX .hkl file",
                ExitCode.INPUT_FORMAT,
            ) from None
    if cell is not None and fmt != "shelx":
        mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    if spacegroup is not None and fmt != "shelx":
        sg = find_spacegroup(spacegroup)
        mtz.spacegroup = sg
    if mtz.spacegroup is None:
        raise PattersolveError(f"{p} names no space group", "give --spacegroup",
                               ExitCode.INPUT_FORMAT)
    return mtz, fmt


def find_spacegroup(name: str) -> gemmi.SpaceGroup:
    """Look up a space group by name or number, or raise a user error."""
    sg = gemmi.find_spacegroup_by_name(name)
    if sg is None and name.strip().isdigit():
        sg = gemmi.find_spacegroup_by_number(int(name))
    if sg is None:
        raise PattersolveError(f"unknown space group {name!r}",
                               "give a Hermann-Mauguin symbol such as 'P 21 21 21' or a number",
                               ExitCode.USAGE)
    return sg


# ---------------------------------------------------------------------------------------------
# column choice
# ---------------------------------------------------------------------------------------------
def _labels_of_type(mtz: gemmi.Mtz, types: str) -> list[str]:
    return [c.label for c in mtz.columns if c.type in types]


def _pick(mtz: gemmi.Mtz, types: str, priority: tuple[str, ...], what: str, flag: str
          ) -> str | None:
    """One column of the given types: the only one, else the first by priority, else error."""
    candidates = _labels_of_type(mtz, types)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    for label in priority:
        if label in candidates:
            return label
    raise PattersolveError(
        f"ambiguous {what} columns: {', '.join(candidates)}",
        f"pick one with {flag} LABEL",
        ExitCode.COLUMNS,
    )


def _sigma_for(mtz: gemmi.Mtz, label: str, sigma_types: str) -> str | None:
    """The sigma paired with a column: ``SIG``+label, else the next column if of sigma type."""
    labels = mtz.column_labels()
    for cand in ("SIG" + label, "SIG" + label.replace("(", "").replace(")", ""),
                 "SIG" + label.split("_")[0]):
        col = mtz.column_with_label(cand)
        if col is not None and col.type in sigma_types:
            return cand
    i = labels.index(label)
    if i + 1 < len(labels) and mtz.columns[i + 1].type in sigma_types:
        return labels[i + 1]
    return None


def _require(mtz: gemmi.Mtz, label: str, types: str, flag: str) -> str:
    col = mtz.column_with_label(label)
    if col is None:
        raise PattersolveError(
            f"column {label!r} not found; the file has: {', '.join(mtz.column_labels())}",
            f"give an existing label with {flag}", ExitCode.COLUMNS)
    if col.type not in types:
        raise PattersolveError(
            f"column {label!r} has MTZ type {col.type}, expected one of {', '.join(types)}",
            f"give a column of the right type with {flag}", ExitCode.COLUMNS)
    return label


def choose_columns(
    mtz: gemmi.Mtz,
    *,
    i_label: str | None = None,
    sigi_label: str | None = None,
    f_label: str | None = None,
    sigf_label: str | None = None,
    free_label: str | None = None,
) -> ColumnChoice:
    """Choose intensity/amplitude, sigma and free-flag columns (explicit labels win).

    Intensities (type J) are preferred for the Patterson; amplitudes (type F) otherwise;
    anomalous pairs (K, then G) are merged to a mean when no mean column exists. An
    amplitude column, when present, is also used for refinement and copied to the output.
    """
    choice: ColumnChoice | None = None
    amp: str | None = None
    if f_label is not None:
        amp = _require(mtz, f_label, "F", "--f-label")
    if i_label is not None:
        lab = _require(mtz, i_label, "J", "--i-label")
        sig = (_require(mtz, sigi_label, "Q", "--sigi-label") if sigi_label
               else _sigma_for(mtz, lab, "Q"))
        choice = ColumnChoice("intensity", [lab], [sig] if sig else [])
    elif f_label is not None:
        choice = ColumnChoice("amplitude", [amp or f_label], [])
    else:
        lab = _pick(mtz, "J", settings.INTENSITY_LABELS, "intensity", "--i-label")
        if lab is not None:
            sig = _sigma_for(mtz, lab, "Q")
            choice = ColumnChoice("intensity", [lab], [sig] if sig else [])
    if amp is None and f_label is None:
        amp = _pick(mtz, "F", settings.AMPLITUDE_LABELS, "amplitude", "--f-label")
    if choice is None and amp is not None:
        choice = ColumnChoice("amplitude", [amp], [])
    if choice is None:
        for kind, types, sig_type, pairs in (
            ("anomalous-intensity", "K", "M", settings.ANOMALOUS_I_LABELS),
            ("anomalous-amplitude", "G", "L", settings.ANOMALOUS_F_LABELS),
        ):
            cands = _labels_of_type(mtz, types)
            if not cands:
                continue
            pair = next((p for p in pairs if p[0] in cands and p[1] in cands), None)
            if pair is None and len(cands) == 2:
                pair = (cands[0], cands[1])
            if pair is None:
                raise PattersolveError(
                    f"ambiguous anomalous columns: {', '.join(cands)}",
                    "pick a mean column with --i-label or --f-label", ExitCode.COLUMNS)
            sigs = [_sigma_for(mtz, lab, sig_type) for lab in pair]
            choice = ColumnChoice(kind, list(pair), [s for s in sigs if s])
            break
    if choice is None:
        raise PattersolveError(
            "no intensity or amplitude column (MTZ types J, F, K or G) in the file; it has: "
            + ", ".join(f"{c.label}({c.type})" for c in mtz.columns),
            "give a file with measured data, or name columns with --i-label/--f-label",
            ExitCode.COLUMNS,
        )
    if amp is not None:
        choice.amplitude = amp
        choice.sigma_amplitude = (_require(mtz, sigf_label, "Q", "--sigf-label") if sigf_label
                                  else _sigma_for(mtz, amp, "Q"))
        if choice.kind == "amplitude":
            choice.sigma = [choice.sigma_amplitude] if choice.sigma_amplitude else []
    if free_label is not None:
        choice.free = _require(mtz, free_label, "I", "--free-label")
    else:
        frees = _labels_of_type(mtz, "I")
        choice.free = next((lab for lab in settings.FREE_LABELS if lab in frees),
                           frees[0] if len(frees) == 1 else None)
    return choice


# ---------------------------------------------------------------------------------------------
# symmetry expansion
# ---------------------------------------------------------------------------------------------
def expand_to_p1_half(hkl: np.ndarray, values: list[np.ndarray], spacegroup: gemmi.SpaceGroup
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Expand unique reflections of real-valued data to the P1 half-sphere.

    Symmetry mates ``h R`` of each reflection carry the same intensity or amplitude; Friedel
    mates are folded onto the half-sphere. Duplicates (from centring or special positions)
    keep their first occurrence.
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    rots = [np.array(op.rot, dtype=np.int64) // op.DEN for op in spacegroup.operations().sym_ops]
    all_h = np.concatenate([hkl @ r for r in rots])
    all_h = np.where(is_half_sphere(all_h)[:, None], all_h, -all_h)
    all_v = [np.concatenate([v] * len(rots)) for v in values]
    _, first = np.unique(all_h, axis=0, return_index=True)
    first = np.sort(first)
    out_h = all_h[first]
    order = np.lexsort((out_h[:, 2], out_h[:, 1], out_h[:, 0]))
    return out_h[order], [v[first][order] for v in all_v]


# ---------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------
def read_reflections(
    path: str | os.PathLike[str],
    *,
    i_label: str | None = None,
    sigi_label: str | None = None,
    f_label: str | None = None,
    sigf_label: str | None = None,
    free_label: str | None = None,
    d_min: float | None = None,
    d_max: float | None = None,
    cell: tuple[float, ...] | None = None,
    spacegroup: str | None = None,
    french_wilson: bool = True,
) -> Reflections:
    """Read measured data and prepare the P1 half-sphere the program works on.

    Parameters
    ----------
    path
        MTZ, mmCIF structure factors (``.cif``) or SHELX HKLF4 (``.hkl``).
    i_label, sigi_label, f_label, sigf_label, free_label
        Explicit column labels; otherwise chosen by type and priority.
    d_min, d_max
        Resolution cut (Angstrom).
    cell, spacegroup
        Override (or, for SHELX files, supply) the cell and space group.
    french_wilson
        Where amplitudes come from intensities with sigmas, take the French & Wilson
        posterior (:mod:`pattersolve.frenchwilson`); False: ``sqrt(max(I, 0))``. The
        Patterson always uses the intensities themselves.

    Returns
    -------
    Reflections
        Raises :class:`~pattersolve.errors.PattersolveError` for unusable input.

    Examples
    --------
    >>> refl = read_reflections("share/examples/alaala_10A.mtz")  # doctest: +SKIP
    >>> refl.summary["columns"]  # doctest: +SKIP
    {'intensity': None, 'amplitude': 'FP', 'sigma': 'SIGFP', 'free': 'FreeR_flag'}
    """
    mtz, fmt = load_mtz(path, cell=cell, spacegroup=spacegroup)
    notes: list[str] = []
    if mtz.nreflections == 0:
        raise PattersolveError(f"{path} holds no reflections", "give a file with data",
                               ExitCode.DATA)
    choice = choose_columns(mtz, i_label=i_label, sigi_label=sigi_label, f_label=f_label,
                            sigf_label=sigf_label, free_label=free_label)
    hkl = mtz.make_miller_array().astype(np.int64)

    def col(label: str | None) -> np.ndarray | None:
        return None if label is None else np.array(mtz.column_with_label(label), dtype=np.float64)

    # --- the Patterson's |F|^2 ---------------------------------------------------------------
    if choice.kind in ("intensity", "amplitude"):
        val = col(choice.value[0])
        assert val is not None
        sig = col(choice.sigma[0]) if choice.sigma else None
    else:
        plus, minus = col(choice.value[0]), col(choice.value[1])
        assert plus is not None and minus is not None
        val = np.where(np.isnan(plus), minus, np.where(np.isnan(minus), plus, (plus + minus) / 2))
        sig = None
        if len(choice.sigma) == 2:
            sp, sm = col(choice.sigma[0]), col(choice.sigma[1])
            assert sp is not None and sm is not None
            sig = np.where(np.isnan(sp), sm, np.where(np.isnan(sm), sp,
                                                      0.5 * np.sqrt(sp**2 + sm**2)))
        notes.append(f"merged anomalous pair {choice.value[0]}/{choice.value[1]} to a mean")
    is_intensity = choice.kind in ("intensity", "anomalous-intensity")

    ok = np.isfinite(val)
    n_nan = int((~ok).sum())
    if sig is not None:
        bad_sig = ok & ~(sig > 0)
        if bad_sig.any():
            notes.append(f"dropped {int(bad_sig.sum())} reflections with sigma <= 0 or missing")
        ok &= sig > 0
    if n_nan:
        notes.append(f"skipped {n_nan} missing (NaN) reflections")
    if not is_intensity:
        neg = ok & (val < 0)
        if neg.any():
            notes.append(f"dropped {int(neg.sum())} negative amplitudes")
        ok &= val >= 0
    absent = mtz.spacegroup.operations().systematic_absences(hkl.astype(np.int32))
    if absent.any():
        notes.append(f"ignored {int((absent & ok).sum())} systematically absent reflections")
        ok &= ~absent
    ok &= np.any(hkl != 0, axis=1)

    d_all = d_spacings(mtz.cell, hkl)
    if d_min is not None:
        ok &= d_all >= d_min - settings.D_MIN_EPS
    if d_max is not None:
        ok &= d_all <= d_max + settings.D_MIN_EPS
    if not ok.any():
        raise PattersolveError(
            f"no usable reflections in {path} (all missing, NaN, or cut by the resolution "
            "limits)", "check the columns and --d-min/--d-max", ExitCode.DATA)

    if is_intensity:
        n_neg = int((val[ok] < 0).sum())
        if n_neg:
            notes.append(f"{n_neg} negative intensities set to 0 for the Patterson")
        intensity = np.clip(val, 0, None)
    else:
        intensity = val**2

    # --- amplitudes for refinement and output ------------------------------------------------
    amplitudes_from = "file"
    if choice.kind in ("amplitude", "anomalous-amplitude"):
        amplitude, sigma_amp = val, sig
    elif choice.amplitude is None:
        amplitude, sigma_amp, amplitudes_from = _amplitudes_from_intensities(
            hkl, val, sig, ok, mtz, french_wilson, notes)
    else:  # the file's amplitudes; intensities only where that column is empty
        amp = col(choice.amplitude)
        assert amp is not None
        samp = col(choice.sigma_amplitude)
        amp_ok = np.isfinite(amp)
        amplitude, sigma_amp = amp, samp
        if (ok & ~amp_ok).any():
            from_i, sig_from_i, how = _amplitudes_from_intensities(  # Wilson's prior from all
                hkl, val, sig, ok, mtz, french_wilson, [])
            amplitude = np.where(amp_ok, amp, from_i)
            if samp is not None or sig_from_i is not None:
                sigma_amp = np.where(amp_ok, np.nan if samp is None else samp,
                                     np.nan if sig_from_i is None else sig_from_i)
            notes.append(f"{int((ok & ~amp_ok).sum())} reflections without "
                         f"{choice.amplitude} take their amplitude from the intensity ({how})")
    free = col(choice.free)

    asu_hkl = hkl[ok]
    values = [intensity[ok], amplitude[ok],
              np.zeros(int(ok.sum())) if sigma_amp is None
              else np.nan_to_num(sigma_amp[ok], nan=0.0),
              np.full(int(ok.sum()), -1.0) if free is None else np.nan_to_num(free[ok], nan=-1)]
    p1_hkl, p1_vals = expand_to_p1_half(asu_hkl, values, mtz.spacegroup)
    p1_sigma = p1_vals[2] if sigma_amp is not None else None
    p1_free = p1_vals[3] if free is not None else None

    d = d_spacings(mtz.cell, p1_hkl)
    d_lo, d_hi = float(d.max()), float(d.min())
    n_possible = _count_possible(mtz.cell, mtz.spacegroup, d_hi, d_lo)
    completeness = min(1.0, len(p1_hkl) / n_possible) if n_possible else 1.0
    summary: dict[str, Any] = {
        "file": str(path),
        "format": fmt,
        "cell": [round(x, 4) for x in mtz.cell.parameters],
        "spacegroup": mtz.spacegroup.hm,
        "columns": {
            "kind": choice.kind,
            "value": choice.value,
            "sigma": choice.sigma,
            "amplitude": choice.amplitude,
            "sigma_amplitude": choice.sigma_amplitude,
            "free": choice.free,
        },
        "patterson_from": "intensities" if is_intensity else "amplitudes squared",
        "amplitudes_from": amplitudes_from,
        "reflections_in_file": int(mtz.nreflections),
        "reflections_used": int(ok.sum()),
        "reflections_p1": int(len(p1_hkl)),
        "resolution": [round(d_lo, 3), round(d_hi, 3)],
        "completeness": round(completeness, 4),
        "notes": notes,
    }
    return Reflections(
        cell=mtz.cell, spacegroup=mtz.spacegroup, hkl=p1_hkl, intensity=p1_vals[0],
        amplitude=p1_vals[1], sigma=p1_sigma, free=p1_free, d=d, asu_hkl=asu_hkl,
        asu_amplitude=amplitude[ok],
        asu_sigma=None if sigma_amp is None else sigma_amp[ok],
        asu_free=None if free is None else free[ok],
        summary=summary, mtz=mtz,
    )


def _amplitudes_from_intensities(hkl: np.ndarray, val: np.ndarray, sig: np.ndarray | None,
                                 ok: np.ndarray, mtz: gemmi.Mtz, french_wilson: bool,
                                 notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``|F|`` and its sigma from intensities (rows outside ``ok`` are NaN or unused).

    French & Wilson where sigmas exist and it is wanted; otherwise ``sqrt(max(I, 0))`` with
    first-order sigmas (floored at ``I ~ 0``). Returns the method's name as the third value.
    """
    if french_wilson and sig is not None:
        amplitude = np.full(len(val), np.nan)
        sigma_amp = np.full(len(val), np.nan)
        amplitude[ok], sigma_amp[ok] = frenchwilson.french_wilson(
            hkl[ok], val[ok], sig[ok], mtz.cell, mtz.spacegroup)
        n_weak = int((ok & (val < sig)).sum())
        notes.append(f"amplitudes from intensities by French & Wilson (Wilson prior in "
                     f"resolution shells; {n_weak} reflections with I < sigma(I))")
        return amplitude, sigma_amp, "french-wilson"
    amplitude = np.sqrt(np.clip(val, 0, None))
    sigma_amp = None
    if sig is not None:
        sigma_amp = np.where(amplitude > 0, sig / (2 * np.maximum(amplitude, 1e-6)),
                             np.sqrt(sig))
    why = "no sigmas in the file" if sig is None else "French-Wilson turned off"
    notes.append(f"amplitudes taken as sqrt(max(I, 0)) ({why})")
    return amplitude, sigma_amp, "sqrt(max(I, 0))"


def _count_possible(cell: gemmi.UnitCell, sg: gemmi.SpaceGroup, d_min: float, d_max: float
                    ) -> int:
    """Reflections a complete data set would have in the P1 half-sphere (absences excluded).

    Counted exactly for ordinary cells; estimated from the reciprocal volume of the shell
    when the index box is too large to enumerate.
    """
    box = np.prod([2 * np.floor(x / d_min) + 1 for x in (cell.a, cell.b, cell.c)])
    if box > 2e7:
        shell = 4.0 / 3.0 * np.pi * (d_min**-3 - d_max**-3) * cell.volume / 2.0
        absent_fraction = 1.0 - 1.0 / max(1, len(sg.operations().cen_ops))
        return int(shell * (1.0 - absent_fraction))
    hkl = miller_sphere(cell, d_min, half=True)
    d = d_spacings(cell, hkl)
    hkl = hkl[d <= d_max + 1e-6]
    absent = sg.operations().systematic_absences(hkl.astype(np.int32))
    return int((~absent).sum())
