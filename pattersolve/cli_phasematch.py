"""``pattersolve-phasematch``: phase agreement of two MTZ files after origin and hand search."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__
from .errors import ExitCode, PattersolveError
from .fourier import d_spacings
from .output import json_text
from .phasematch import (
    PhaseMatch,
    comparison_group,
    match_phases,
    random_phase_floor,
    read_map_coefficients,
)
from .settings import N_RESOLUTION_BINS
from .transaction import OutputSet

PROG = "pattersolve-phasematch"


def _labels(value: str | None, flag: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise PattersolveError(f"{flag} takes two labels separated by a comma, got {value!r}",
                               f"e.g. {flag} FWT,PHWT", ExitCode.USAGE)
    return parts[0], parts[1]


def _common(hkl_a: np.ndarray, f_a: np.ndarray, hkl_b: np.ndarray, f_b: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reflections present in both sets (both P1 half-sphere)."""
    key_a = {tuple(h): i for i, h in enumerate(hkl_a.tolist())}
    ia, ib = [], []
    for j, h in enumerate(hkl_b.tolist()):
        i = key_a.get(tuple(h))
        if i is not None:
            ia.append(i)
            ib.append(j)
    ia_arr, ib_arr = np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)
    return hkl_a[ia_arr], f_a[ia_arr], f_b[ib_arr]


def _table(match: PhaseMatch, floor: PhaseMatch) -> str:
    lines = [
        f"{'d_low':>7} {'d_high':>7} {'n':>6} {'<dphi>w':>8} {'<dphi>':>8} {'f<60':>6}"
        f" {'floor w':>8}",
    ]
    for b, fb in zip(match.bins, floor.bins, strict=False):
        lines.append(
            f"{b['d_low']:7.2f} {b['d_high']:7.2f} {b['n']:6d} {b['weighted_error']:8.1f} "
            f"{b['unweighted_error']:8.1f} {b['fraction_under_60']:6.2f} "
            f"{fb['weighted_error']:8.1f}")
    fr = match.fraction_under
    lines += [
        "",
        f"reflections          {match.n}",
        f"space group          {match.spacegroup} (other hand "
        f"{'searched' if match.hand_allowed else 'not allowed'})",
        f"origin shift         ({match.shift[0]:.4f}, {match.shift[1]:.4f}, "
        f"{match.shift[2]:.4f})",
        f"hand                 {'inverted (F -> F*)' if match.inverted else 'as given'}",
        f"weighted error       {match.weighted_error:6.1f} deg   (random phases: "
        f"{floor.weighted_error:.1f})",
        f"unweighted error     {match.unweighted_error:6.1f} deg   (random phases: "
        f"{floor.unweighted_error:.1f})",
        f"map CC               {match.map_cc:6.3f}       (random phases: {floor.map_cc:.3f})",
        f"fraction < 15/30/60  {fr[15]:.2f} / {fr[30]:.2f} / {fr[60]:.2f}",
    ]
    return "\n".join(lines)


def _plot(match: PhaseMatch, floor: PhaseMatch, path: str) -> None:
    """Draw the per-bin errors into the PNG file ``path`` (a staged temporary file)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PattersolveError("--plot needs matplotlib", "pip install 'pattersolve[plot]'",
                               ExitCode.BACKEND) from exc
    d_mid = [0.5 * (b["d_low"] + b["d_high"]) for b in match.bins]
    x = [1.0 / d**2 for d in d_mid]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(x, [b["weighted_error"] for b in match.bins], "o-", label="weighted")
    ax1.plot(x, [b["unweighted_error"] for b in match.bins], "s-", label="unweighted")
    ax1.plot([1.0 / (0.5 * (b["d_low"] + b["d_high"])) ** 2 for b in floor.bins],
             [b["weighted_error"] for b in floor.bins], "k--", label="random phases")
    ax1.set_ylabel("mean phase error (deg)")
    ax1.set_ylim(0, 95)
    ax2.plot(x, [b["fraction_under_60"] for b in match.bins], "o-", label="test")
    ax2.plot([1.0 / (0.5 * (b["d_low"] + b["d_high"])) ** 2 for b in floor.bins],
             [b["fraction_under_60"] for b in floor.bins], "k--", label="random phases")
    ax2.set_ylabel("fraction < 60 deg")
    ax2.set_ylim(0, 1.05)
    ticks = x[:: max(1, len(x) // 5)]
    for ax in (ax1, ax2):
        ax.set_xlabel("resolution (A)")
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{1 / np.sqrt(t):.2f}" for t in ticks])
        ax.legend()
    fig.suptitle(f"weighted {match.weighted_error:.1f} deg, CC {match.map_cc:.3f}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)


def _compare(ref: str, test: str, ref_labels: str | None, test_labels: str | None,
             d_min: float | None, bins: int, seed: int
             ) -> tuple[PhaseMatch, PhaseMatch, dict | None]:
    """Read both files, choose the group, and match (the result and the random floor)."""
    cell, sg_r, hkl_r, f_r = read_map_coefficients(ref, *_labels(ref_labels, "--ref-labels"))
    cell_t, sg_t, hkl_t, f_t = read_map_coefficients(test, *_labels(test_labels, "--test-labels"))
    sg, expansion = comparison_group((ref, cell, sg_r), (test, cell_t, sg_t))
    if expansion:
        other = test if expansion["file"] == "reference" else ref
        click.echo(f"expanded to P1: {expansion['path']} ({expansion['from']}) to compare with "
                   f"{other} (P 1); origins and hand searched in P 1")
    hkl, fr, ft = _common(hkl_r, f_r, hkl_t, f_t)
    if d_min is not None:
        keep = d_spacings(cell, hkl) >= d_min - 1e-6
        hkl, fr, ft = hkl[keep], fr[keep], ft[keep]
    if len(hkl) < 2:
        raise PattersolveError(f"{ref} and {test} share fewer than 2 reflections",
                               "check the files and --d-min", ExitCode.DATA)
    match = match_phases(hkl, fr, ft, cell, sg, n_bins=bins)
    floor = random_phase_floor(hkl, fr, cell, np.random.default_rng(seed), sg, n_bins=bins)
    return match, floor, expansion


def run(ref: str, test: str, ref_labels: str | None, test_labels: str | None,
        d_min: float | None, bins: int, plot: str | None, json_path: str | None,
        seed: int, overwrite: bool = False) -> dict:
    """The command's work, returning the JSON document (also used by tests).

    The outputs (--json, --plot) are one :class:`~pattersolve.transaction.OutputSet`: checked
    and locked before any work, staged beside their targets, and renamed into place together
    once both are written, so a failure leaves the folder as it was.
    """
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise PattersolveError("--plot needs matplotlib", "pip install 'pattersolve[plot]'",
                               ExitCode.USAGE)
    with OutputSet([plot, json_path], overwrite, protect=[ref, test]) as outputs:
        match, floor, expansion = _compare(ref, test, ref_labels, test_labels, d_min, bins,
                                           seed)
        click.echo(_table(match, floor))
        doc = {"program": PROG, "version": __version__, "reference": str(ref),
               "test": str(test), "expanded_to_p1": expansion, "result": match.to_dict(),
               "random_phase_floor": floor.to_dict()}
        if json_path:
            text = json_text(doc)
            outputs.stage(json_path, lambda tmp: Path(tmp).write_text(text))
        if plot:
            outputs.stage(plot, lambda tmp: _plot(match, floor, tmp))
        outputs.commit()
    return doc


@click.command(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ref", type=click.Path(dir_okay=False))
@click.argument("test", type=click.Path(dir_okay=False))
@click.option("--ref-labels", metavar="F,PHI", help="Amplitude and phase labels of REF.")
@click.option("--test-labels", metavar="F,PHI", help="Amplitude and phase labels of TEST.")
@click.option("--d-min", type=float, help="High-resolution cut-off in A.")
@click.option("--bins", type=click.IntRange(1, 100), default=N_RESOLUTION_BINS,
              show_default=True, help="Resolution bins (equal counts).")
@click.option("--plot", metavar="OUT.png", help="Plot error and fraction < 60 deg per bin.")
@click.option("--json", "json_path", metavar="OUT.json", help="Write all numbers as JSON.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random-phase floor.")
@click.option("--overwrite", is_flag=True, help="Replace existing --plot/--json files.")
@click.version_option(__version__, prog_name=PROG)
def main(ref: str, test: str, ref_labels: str | None, test_labels: str | None,
         d_min: float | None, bins: int, plot: str | None, json_path: str | None,
         seed: int, overwrite: bool) -> None:
    """Phase error of TEST against REF after the best origin shift and hand.

    Both files are MTZs with map coefficients (chosen by type and label priority: FWT/PHWT,
    FC/PHIC, F-model/PHIF-model, FP/PHIB, F/PHI, ...). The search allows the origin shifts
    the space group permits and the other hand unless the group is enantiomorphic. The
    random-phase floor (same amplitudes, random phases, same search) is printed beside the
    result: an error near it means no information. When one file is in P1 (pattersolve writes
    P1-expanded data when a solution fails the symmetry check) and the other in a higher
    group with the same cell, the other is expanded to P1 and the comparison is made in P1
    (every origin, both hands); a line says so, and so does the JSON ("expanded_to_p1").

    \b
    Examples:
      pattersolve-phasematch model.mtz pattersolve.mtz
      pattersolve-phasematch ref.mtz test.mtz --test-labels FWT,PHWT --d-min 2.0
      pattersolve-phasematch ref.mtz test.mtz --bins 8 --plot err.png --json err.json
    """
    try:
        run(ref, test, ref_labels, test_labels, d_min, bins, plot, json_path, seed, overwrite)
    except PattersolveError as exc:
        click.echo(f"{PROG}: error: {exc.one_line()}", err=True)
        sys.exit(int(exc.exit_code))


if __name__ == "__main__":  # pragma: no cover
    main()
