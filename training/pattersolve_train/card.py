"""A model card's evaluation sections, and refreshing them on a shipped model.

``export`` writes a card's README.md as a head (task, files, network, data, training: what the
checkpoint knew) followed by a body rendered from the evaluations: :func:`card_body`, that is
:func:`evaluation_section`, :func:`rotation_section` and the figures.

A card exported before a metric existed (the better-fitting hand, centrosymmetry, the
bootstrap intervals) can be brought up to date without a checkpoint: :func:`refresh_card`
(``pattersolve-train card``) takes a fresh ``evaluate --model`` of the *same* weights (the
safetensors SHA-256 must match the card's), checks that it reproduces the card's numbers
within the stated tolerance (:mod:`pattersolve_train.reproduce`), and re-renders the body
from it; the head and the weights are untouched. It refreshes how a card reports its model,
never which numbers it claims: an evaluation that does not reproduce the card is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pattersolve import __version__
from pattersolve.errors import ExitCode, PattersolveError
from pattersolve.transaction import OutputSet

from .reproduce import check_reproduction

#: The heading the body starts with; everything before it is the card's head.
EVALUATION_HEADING = "## Evaluation (test split)"
#: The evaluation's figures that travel with the card, in the order they are shown.
PLOTS: tuple[str, ...] = ("cc_histogram.png", "phase_error_by_resolution.png")


def _fmt(x: Any, f: str = ".3f") -> str:
    return format(x, f) if isinstance(x, (int, float)) else "n/a"


def _source(name: str, ev: dict[str, Any]) -> str:
    """Which weights an evaluation scored, as the card says it."""
    if ev.get("model_sha256"):
        return (f"Evaluated on the weights as shipped (`pattersolve-train evaluate --model "
                f"models/{name} --n {ev.get('n_requested', ev.get('n'))}`). ")
    if ev.get("run"):
        return (f"Evaluated on the run's fp32 weights before export (`pattersolve-train evaluate "
                f"--run {ev['run']}`). ")
    return ""


def evaluation_section(evaluation: dict[str, Any], paper: dict[str, Any] | None,
                       name: str = "") -> str:
    """The card's "Evaluation (test split)" section from an ``evaluation.json`` dict.

    Parameters
    ----------
    evaluation
        What ``pattersolve-train evaluate`` wrote (empty: the run was not evaluated).
    paper
        The paper's numbers for this setup (``median_cc``, ``median_phase_error``) or None.
    name
        The model's name (for the command the card names).
    """
    ev = evaluation or {}
    floor = ev.get("random_floor", {})
    paper = paper or {}
    intervals = ev.get("intervals_95") or {}

    def val(key: str, f: str = ".3f") -> str:  # the median and, where known, its 95 % interval
        lo_hi = intervals.get(key)
        ci = f" ({format(lo_hi[0], f)}-{format(lo_hi[1], f)})" if lo_hi else ""
        return _fmt(ev.get(key), f) + ci

    lines = [
        EVALUATION_HEADING, "",
        _source(name, ev)
        + "Phase error after the best origin shift and hand (`pattersolve.phasematch`); "
        "random phases with the true amplitudes go through the same search (the floor). "
        "Centrosymmetry is `pattersolve.phases.centrosymmetry` (1: the map has a centre of "
        "symmetry, as an average of both hands would).", "",
        "| | this model | random phases | paper |",
        "|---|---|---|---|",
        f"| median CC (density) | {val('median_cc')} | - | "
        f"{_fmt(paper.get('median_cc'), '.2f')} |",
        f"| median CC with the better-fitting hand | {val('median_twin_cc')} | - | - |",
        f"| true hand (of the examples < 60 deg) | {_fmt(ev.get('fraction_true_hand'), '.2f')} "
        "| 0.5 | - |",
        f"| median centrosymmetry of the map (true maps: "
        f"{_fmt(ev.get('median_true_centrosymmetry'), '.2f')}) | "
        f"{_fmt(ev.get('median_centrosymmetry'))} | - | - |",
        f"| median map CC after alignment | {val('median_map_cc')} | "
        f"{_fmt(floor.get('median_map_cc'))} | - |",
        f"| median phase error, weighted (deg) | "
        f"{val('median_phase_error_weighted', '.1f')} | "
        f"{_fmt(floor.get('median_phase_error_weighted'), '.1f')} | "
        f"{_fmt(paper.get('median_phase_error'), '.0f')} |",
        f"| median phase error, unweighted (deg) | "
        f"{val('median_phase_error_unweighted', '.1f')} | "
        f"{_fmt(floor.get('median_phase_error_unweighted'), '.1f')} | - |",
        "", f"Test examples: {ev.get('n', 'not evaluated')}."
        + (" In parentheses: 95 % bootstrap intervals of the medians over the test examples (how "
           "far another draw of as many test maps would move them)." if intervals else ""),
    ]
    if ev.get("bins"):
        lines += ["", "| d (A) | mean phase error | random | fraction < 60 | random |",
                  "|---|---|---|---|---|"]
        for b in ev["bins"]:
            lines.append(f"| {b['d_low']:.2f}-{b['d_high']:.2f} | "
                         f"{b['mean_weighted_error']:.1f} | {b['floor_mean_weighted_error']:.1f} | "
                         f"{b['fraction_under_60']:.2f} | {b['floor_fraction_under_60']:.2f} |")
    lines += ["", "These are the network's own numbers. In pattersolve the prediction is the "
              "starting density and support of projection refinement: BENCHMARKS.md "
              "(`python bench/bench_phasing.py`) puts the network alone, classical refinement "
              "from random phases, network + refinement and random phases side by side for "
              "this regime.", ""]
    return "\n".join(lines) + "\n"


def rotation_section(name: str, single: dict[str, Any], averaged: dict[str, Any]) -> str:
    """The model card's section on the prediction averaged over rotations of the cell
    (``evaluate --average-rotations``), beside the single prediction's numbers."""

    def row(label: str, key: str, f: str = ".3f") -> str:
        return f"| {label} | {_fmt(single.get(key), f)} | {_fmt(averaged.get(key), f)} |"

    return "\n".join([
        "## Averaged over rotations (`pattersolve --average-rotations`)", "",
        "The Patterson turned by each rotation of the cell onto itself (median "
        f"{averaged.get('median_rotations', 'n/a'):g} per map here), each prediction turned "
        "back, all put into one hand and averaged (`pattersolve.rotations`); network alone, "
        f"the same {averaged.get('n', 'n/a')} test maps (`pattersolve-train evaluate --model "
        f"models/{name} --average-rotations`). Not the default: BENCHMARKS.md (averaged over "
        "rotations) has what it does to network + refinement.", "",
        "| | single prediction | averaged over rotations |", "|---|---|---|",
        row("median CC (density)", "median_cc"),
        row("median CC with the better-fitting hand", "median_twin_cc"),
        row("true hand (of the examples < 60 deg)", "fraction_true_hand", ".2f"),
        row("median centrosymmetry of the map", "median_centrosymmetry"),
        row("median phase error, weighted (deg)", "median_phase_error_weighted", ".1f"),
        row("median phase error, unweighted (deg)", "median_phase_error_unweighted", ".1f"),
        "",
    ])


def card_body(name: str, evaluation: dict[str, Any], rotations: dict[str, Any],
              paper: dict[str, Any] | None, plots: list[str]) -> str:
    """Everything of a card's README.md from :data:`EVALUATION_HEADING` on: the evaluation,
    the rotation average (where evaluated) and the figures (file names in the model folder)."""
    return (evaluation_section(evaluation, paper, name)
            + (rotation_section(name, evaluation, rotations) if rotations else "")
            + "".join(f"\n![{Path(p).stem}]({p})\n" for p in plots))


def _read_evaluation(folder: Path, rotations: bool) -> dict[str, Any]:
    path = Path(folder) / "evaluation.json"
    if not path.is_file():
        raise PattersolveError(f"no evaluation.json in {folder}",
                               "give the --out folder of `pattersolve-train evaluate --model`",
                               ExitCode.INPUT_MISSING)
    ev = json.loads(path.read_text())
    if bool(ev.get("average_rotations", False)) != rotations:
        which = "--rotations" if not rotations else "--evaluation"
        raise PattersolveError(f"{path} is {'not ' if rotations else ''}averaged over rotations",
                               f"pass it as {which}", ExitCode.USAGE)
    return ev


def refresh_card(model_dir: str | os.PathLike[str], evaluation_dir: str | os.PathLike[str],
                 rotations_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Re-render a shipped model card's evaluation from a fresh evaluation of its weights.

    Parameters
    ----------
    model_dir
        ``models/<name>`` as ``export`` wrote it (card.json, README.md, model.safetensors).
    evaluation_dir
        The ``--out`` of ``pattersolve-train evaluate --model <model_dir>`` (with plots).
    rotations_dir
        The same with ``--average-rotations``, or None to keep the card's rotation average.

    Returns
    -------
    dict
        What was recorded in card.json under ``card_refreshed``: the date, the version and
        the reproduction check of each evaluation against the card's.

    Raises
    ------
    PattersolveError
        The folder is not an exported model, an evaluation is of other weights (SHA-256) or of
        other test maps, its figures are missing, or it does not reproduce the card's numbers
        (exit code 11). Nothing is written then.
    """
    model_dir = Path(model_dir)
    card, readme = _read_card(model_dir)
    at = readme.find("\n" + EVALUATION_HEADING + "\n")
    name = card.get("name", model_dir.name)
    checks: dict[str, Any] = {}
    new: dict[str, dict[str, Any]] = {}
    for key, folder in (("evaluation", evaluation_dir), ("evaluation_rotations", rotations_dir)):
        if folder is not None:
            new[key], check = _checked_evaluation(card, key, Path(folder), model_dir)
            if check is not None:
                checks[key] = check
    missing = [p for p in PLOTS if not (Path(evaluation_dir) / p).is_file()]
    if missing:
        raise PattersolveError(f"{evaluation_dir} has no {', '.join(missing)}",
                               "evaluate without --no-plots", ExitCode.INPUT_MISSING)

    card.update(new)
    record = {"date": dt.date.today().isoformat(), "pattersolve_version": __version__,
              "reproduction": checks}
    card["card_refreshed"] = record
    body = card_body(name, card["evaluation"], card.get("evaluation_rotations") or {},
                     card["evaluation"].get("paper"), list(PLOTS))
    _replace_files(model_dir, {p: Path(evaluation_dir) / p for p in PLOTS},
                   {"card.json": json.dumps(card, indent=1) + "\n",
                    "README.md": readme[:at + 1] + body})
    return record


def _read_card(model_dir: Path) -> tuple[dict[str, Any], str]:
    """card.json and README.md of an exported model (one with checksums and an evaluation
    section)."""
    card_path, readme_path = model_dir / "card.json", model_dir / "README.md"
    if not card_path.is_file() or not readme_path.is_file():
        raise PattersolveError(f"{model_dir} has no card.json and README.md",
                               "give a folder written by `pattersolve-train export`",
                               ExitCode.INPUT_MISSING)
    card = json.loads(card_path.read_text())
    readme = readme_path.read_text()
    if "\n" + EVALUATION_HEADING + "\n" not in readme or "sha256" not in card:
        raise PattersolveError(f"{readme_path} has no '{EVALUATION_HEADING}' section or "
                               "card.json no checksums", "re-export the model", ExitCode.MODEL)
    return card, readme


def _checked_evaluation(card: dict[str, Any], key: str, folder: Path, model_dir: Path
                        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The evaluation in ``folder`` for the card's ``key``, refused unless it is of the card's
    weights and reproduces the card's numbers (where the card has them); and that check."""
    weights_sha = card["sha256"]["model.safetensors"]
    name = card.get("name", model_dir.name)
    ev = _read_evaluation(folder, rotations=key == "evaluation_rotations")
    if ev.get("model_sha256") != weights_sha:
        raise PattersolveError(
            f"{folder}/evaluation.json is not an evaluation of {model_dir}/model.safetensors "
            f"(SHA-256 {str(ev.get('model_sha256'))[:12]}..., the card's "
            f"{weights_sha[:12]}...)",
            f"run `pattersolve-train evaluate --model {model_dir} --out {folder}`",
            ExitCode.USAGE)
    ev.pop("reproduction", None)  # an `--expect` check of the evaluation, not of the card
    if not card.get(key):
        return ev, None
    check = check_reproduction(ev, card[key], name)
    if not check.reproduced:
        raise PattersolveError(
            f"{folder} does not reproduce the card of {name} "
            f"({'; '.join(check.lines()[-1:])})",
            "a card is refreshed only with its own numbers: export a new model to "
            "change them", ExitCode.NOT_REPRODUCED)
    return ev, check.as_json()


def _replace_files(folder: Path, copies: dict[str, Path], texts: dict[str, str]) -> None:
    """Replace every file (copies of files, and texts) in ``folder`` as one transaction
    (:class:`pattersolve.transaction.OutputSet`): all of them, or none."""
    targets = [folder / name for name in [*copies, *texts]]
    with OutputSet(targets, overwrite=True) as out:
        for name, source in copies.items():
            out.stage(folder / name, lambda tmp, source=source: shutil.copyfile(source, tmp))
        for name, text in texts.items():
            out.stage(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))
        out.commit()
