"""``pattersolve-train``: prepare shards, fit, evaluate and export models.

torch is imported inside the commands that need it, so ``pattersolve-train --help`` is fast.
User errors (:class:`pattersolve.errors.PattersolveError`) are caught once, in :func:`main`,
and printed as one line with the exit code they carry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pattersolve.errors import ExitCode, PattersolveError


def _cpu_env() -> None:
    """OpenMP spin-waiting collapses throughput on a shared CPU (COMPUTE_NOTES.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train the Patterson-to-density network.

    \b
    Typical session (from the repository root; training/README.md is the guide):
      pattersolve-train prepare --dialanine --max-per-entry 32 --out data/shards/alaala
      pattersolve-train fit --config training/configs/cpu_1b.toml --out runs/cpu_1b
      pattersolve-train fit --out runs/cpu_1b --resume   # after a stop, on any machine
      pattersolve-train evaluate --run runs/cpu_1b
      pattersolve-train curves runs/cpu_1b --out runs/cpu_1b/curves.png
      pattersolve-train export --run runs/cpu_1b --name my-alaala --models-dir runs/models
      pattersolve-train compare runs/cpu_1b models/alaala-10A   # a re-run vs the shipped one
      pattersolve-train evaluate --model models/alaala-10A --out runs/ev/alaala-10A
      pattersolve-train paired runs/ev/alaala-10A runs/cpu_1b/evaluation   # better?

    \b
    Reproducing a shipped model (training/README.md; its config's header has the commands):
      pattersolve-train evaluate --run runs/hard-tri-twin2 --n 200 --expect hard-tri

    Exit codes: 0 ok, 2 usage, 3 input missing, 4 input format, 6 data, 7 resources, 8 model,
    9 output, 10 backend, 11 not reproduced (evaluate --expect, compare
    --require-identical), 130 interrupted, 1 internal error.
    """


@cli.command()
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="Directory or tarball of .pdb/.cif/.ent(.gz) files "
                   "[default: ../shared/data/pdb/pdownb_PDB.tar.xz].")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output shard directory.")
@click.option("--split-dir", type=click.Path(path_type=Path), default=None,
              help="Directory with *split_{train,val,test}.txt [default: next to the source; "
                   "a hash of the entry id when there are none].")
@click.option("--length", type=int, default=2, show_default=True, help="Residues per fragment.")
@click.option("--dialanine", is_flag=True,
              help="Truncate every residue at CB and rename it ALA (runs with GLY skipped).")
@click.option("--max-per-entry", type=int, default=None,
              help="At most this many fragments per entry (a seeded random subset).")
@click.option("--max-entries", type=int, default=None,
              help="At most this many entries per split (quick runs).")
@click.option("--entries-per-shard", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Parsing processes.")
@click.option("--shard", "shard_spec", default="0/1", show_default=True,
              help="k/n: prepare only every n-th shard starting at k (array jobs).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare(source: Path | None, out: Path, split_dir: Path | None, length: int,
            dialanine: bool, max_per_entry: int | None, max_entries: int | None,
            entries_per_shard: int, workers: int, shard_spec: str, seed: int,
            quiet: bool) -> None:
    """PDB/mmCIF files -> fragment shards + manifest.json (resumable).

    \b
    Examples:
      pattersolve-train prepare --dialanine --max-per-entry 32 --workers 2 --out data/shards/alaala
      pattersolve-train prepare --source my_pdbs/ --length 3 --out data/shards/tri
      pattersolve-train prepare --out data/shards/all2 --shard 3/8   # array job 3 of 8
    """
    from .prepare import PrepareOptions
    from .prepare import prepare as run_prepare

    try:
        k, n = (int(x) for x in shard_spec.split("/"))
    except ValueError as exc:
        raise PattersolveError(f"--shard {shard_spec!r} is not k/n", "e.g. --shard 0/4",
                               ExitCode.USAGE) from exc
    opts = PrepareOptions(length=length, dialanine=dialanine, max_per_entry=max_per_entry,
                          max_entries=max_entries, entries_per_shard=entries_per_shard,
                          seed=seed)
    report = run_prepare(source, out, opts, split_dir=split_dir, workers=workers,
                         shard=(k, n), progress=not quiet)
    for err in report.errors[:20]:
        click.echo(f"warning: {err}", err=True)
    if len(report.errors) > 20:
        click.echo(f"warning: ... and {len(report.errors) - 20} more", err=True)
    rate = report.n_entries / max(report.seconds, 1e-9)
    click.echo(f"{report.n_entries} entries read ({rate:.1f}/s), {report.n_shards_written} "
               f"shards written, {report.n_shards_skipped} already present")
    if report.manifest_written:
        click.echo(f"{out / 'manifest.json'}: {report.n_fragments} fragments")
    else:
        click.echo("manifest not written yet: other --shard jobs still have shards to write")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML config (training/configs/*.toml); optional with --resume.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory [default: runs/<config name>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--max-steps", type=int, default=None,
              help="Stop after this many steps in total (the schedule is unchanged, so a "
                   "later --resume continues the same run).")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Override the config's shard directory.")
@click.option("--init", "init_from", metavar="MODEL",
              help="Start a new run from a model's weights (name, models/<name>, or a run "
                   "folder), e.g. to continue a CPU-trained model on a GPU; the optimiser "
                   "and schedule start afresh (--resume continues a run exactly).")
@click.option("--seed", type=int, default=None,
              help="Override the config's seed: a replicate of the same recipe, to measure "
                   "how much two trainings differ (initial weights, batches and the "
                   "validation maps follow it; the test maps of `evaluate` are fixed) "
                   "[default run directory: runs/<config name>-seed<SEED>].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fit(config_path: Path | None, out: Path | None, resume: bool, max_steps: int | None,
        shards: Path | None, init_from: str | None, seed: int | None, quiet: bool) -> None:
    """Train a network (checkpoints every N steps and on Ctrl-C / SIGTERM).

    \b
    Examples:
      pattersolve-train fit --config training/configs/cpu_1b.toml --out runs/cpu_1b
      pattersolve-train fit --out runs/cpu_1b --resume
      pattersolve-train fit --config training/configs/gpu_1b.toml --init alaala-10A \\
          --out runs/alaala-10A-more
      pattersolve-train fit --config training/configs/hard_tri.toml --seed 1   # a replicate
      torchrun --standalone --nproc-per-node 2 -m pattersolve_train.cli fit --config X.toml \\
          --out runs/x
    """
    _cpu_env()
    from .train import config_for_run, load_config, with_overrides
    from .train import fit as run_fit

    if seed is not None and resume:
        raise PattersolveError("--seed with --resume", "a run resumes with its own seed: "
                               "leave out --seed", ExitCode.USAGE)
    if config_path is None:
        if not (resume and out is not None):
            raise PattersolveError("no --config given", "give --config X.toml, or --out RUN "
                                   "--resume to continue a run", ExitCode.USAGE)
        cfg = config_for_run(out)
    else:
        cfg = load_config(config_path)
    cfg = with_overrides(cfg, shards=str(shards) if shards else None, seed=seed)
    if resume and config_path is not None and out is not None:
        saved = config_for_run(out)  # a run resumes with its own shard path unless overridden
        cfg = with_overrides(cfg, shards=None if shards else saved.shards)
    default_dir = Path("runs") / (cfg.name if seed is None else f"{cfg.name}-seed{seed}")
    run_dir = out if out is not None else default_dir
    result = run_fit(cfg, run_dir, resume=resume, stop_at=max_steps, progress=not quiet,
                     init_from=init_from)
    if int(os.environ.get("RANK", "0")) == 0:
        state = "interrupted, checkpoint saved" if result.interrupted else "done"
        m = result.last_metrics
        extra = "".join(f", {k} {m[k]:.4g}" for k in ("train_loss", "val_loss", "val_cc",
                                                      "val_centrosymmetry") if k in m)
        click.echo(f"{result.run_dir}: step {result.step}/{result.total_steps} ({state}), "
                   f"{result.wall_time:.0f} s{extra}")


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="A training run directory (its checkpoint).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="An exported model directory (models/<name>).")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Shard directory with the test split [default: the run's].")
@click.option("--n", "n_examples", type=int, default=500, show_default=True,
              help="Test examples to evaluate.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory [default: <run>/evaluation, or "
                   "runs/evaluate/<model name> for --model; with --average-rotations "
                   "evaluation-rotations, <model name>-rotations].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--average-rotations", is_flag=True,
              help="Score the prediction averaged over the rotations of the cell onto itself "
                   "(24 in a cubic cell; what `pattersolve --average-rotations` runs).")
@click.option("--expect", "expect_model", default=None, metavar="MODEL",
              help="Check the result against this shipped model's card (a name or folder): "
                   "median CCs within 0.01, median phase errors within 1 deg; exit code 11 "
                   "when not. Needs the card's --n and shards.")
def evaluate(run_dir: Path | None, model_dir: Path | None, shards: Path | None,
             n_examples: int, out: Path | None, no_plots: bool,
             average_rotations: bool, expect_model: str | None) -> None:
    """Median CC and phase error (origin/hand search) on the test split, with random floors.

    With --expect the evaluation is also the reproduction check: fit a shipped model's config,
    evaluate the run with --expect <model>, and the exit code says whether its card's numbers
    were reproduced within the stated tolerance (recorded in evaluation.json).

    \b
    Examples:
      pattersolve-train evaluate --run runs/cpu_1b
      pattersolve-train evaluate --model models/alaala-10A --shards data/shards/alaala --n 200
      pattersolve-train evaluate --model models/all-12A --average-rotations --out /tmp/ev
      pattersolve-train evaluate --run runs/hard-tri-twin2 --n 200 --expect hard-tri
    """
    _cpu_env()
    from .evaluate import evaluate as run_evaluate
    from .reproduce import card_evaluation, check_reproduction

    if (run_dir is None) == (model_dir is None):
        raise PattersolveError("give exactly one of --run and --model", "e.g. --run runs/x",
                               ExitCode.USAGE)
    expected = None
    if expect_model is not None:  # refuse a meaningless check before the work
        label, expected = card_evaluation(expect_model, average_rotations)
        asked = expected.get("n_requested")
        if (asked is not None and asked != n_examples) or n_examples < expected.get("n", 0):
            raise PattersolveError(f"the card of {label} was evaluated on n={expected.get('n')} "
                                   f"test examples{f' (--n {asked})' if asked else ''}, "
                                   f"not --n {n_examples}",
                                   f"evaluate with --n {asked or expected.get('n')}",
                                   ExitCode.USAGE)
    summary = run_evaluate(run_dir=run_dir, model_dir=model_dir, shards=shards,
                           n_examples=n_examples, out=out, plots=not no_plots,
                           average_rotations=average_rotations)
    click.echo(summary.one_line())
    if expected is not None:
        check = check_reproduction(summary.data, expected, label)
        summary.record("reproduction", check.as_json())
        for line in check.lines():
            click.echo(line)
        if not check.reproduced:
            raise PattersolveError(f"{label} not reproduced (metrics outside the stated "
                                   "tolerance; recorded in "
                                   f"{summary.out / 'evaluation.json'})",
                                   "compare the configs, shards and hardware with the card's",
                                   ExitCode.NOT_REPRODUCED)


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True,
              help="A training run directory (its checkpoint is rewritten).")
@click.option("--examples", "n_examples", type=int, default=2048, show_default=True,
              help="Training examples the statistics are averaged over.")
def recalibrate(run_dir: Path, n_examples: int) -> None:
    """Re-estimate the BatchNorm statistics of a finished run (before evaluate and export).

    Training keeps an exponential average of the last batches' statistics; with cell-bucketed
    batches (one map per forward pass) that is a few maps, and the network's eval-mode output
    depends on which. This replaces them by the average over --examples training examples.
    Deterministic; weights are unchanged; prints validation loss and CC before and after.

    \b
    Examples:
      pattersolve-train recalibrate --run runs/hard-tri-twin2
      pattersolve-train evaluate --run runs/hard-tri-twin2 --n 200
    """
    _cpu_env()
    from .train import recalibrate_run

    if n_examples <= 0:
        raise PattersolveError(f"--examples {n_examples}", "give a positive number",
                               ExitCode.USAGE)
    r = recalibrate_run(run_dir, n_examples)
    b = r["before"]
    click.echo(f"{run_dir}: BatchNorm statistics from {r['bn_recalibrated']} training "
               f"examples; validation loss {b['val_loss']:.4f} -> {r['val_loss']:.4f}, CC "
               f"{b['val_cc']:.4f} -> {r['val_cc']:.4f}, centrosymmetry "
               f"{b['val_centrosymmetry']:.2f} -> {r['val_centrosymmetry']:.2f}")


@cli.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True,
              help="The training run to export.")
@click.option("--name", required=True, help="Model name, e.g. alaala-10A.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=Path("models"),
              show_default=True)
@click.option("--task", default=None, help="One-line task description for the card.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
def export(run_dir: Path, name: str, models_dir: Path, task: str | None,
           overwrite: bool) -> None:
    """Write models/<name>/: model.safetensors, model.onnx, card.json, README.md.

    \b
    Examples:
      pattersolve-train export --run runs/cpu_1b --name alaala-10A
      pattersolve-train export --run runs/x --name test --models-dir /tmp/models --overwrite
    """
    _cpu_env()
    from .export import export_model

    result = export_model(run_dir, name, models_dir, task=task, overwrite=overwrite)
    click.echo(f"{result.directory}: weights {result.weights_dtype}, onnx max diff "
               f"{result.onnx_max_diff:.2e}, fp16 change {result.fp16_rel_rms:.2e} (relative RMS)")


@cli.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="A shipped model folder (models/<name>).")
@click.option("--evaluation", "evaluation_dir", type=click.Path(path_type=Path), required=True,
              help="The --out folder of `evaluate --model` on that model (with plots).")
@click.option("--rotations", "rotations_dir", type=click.Path(path_type=Path), default=None,
              help="The same with --average-rotations [default: keep the card's].")
def card(model_dir: Path, evaluation_dir: Path, rotations_dir: Path | None) -> None:
    """Re-render a model card's evaluation from a fresh evaluation of the same weights.

    For a card written before a metric existed (better-fitting hand, centrosymmetry,
    bootstrap intervals). The evaluation must be of the card's own safetensors file (SHA-256)
    on the card's test maps, and reproduce its numbers within the stated tolerance (exit code
    11 when not: a card is never given other numbers for the same weights). The card's head
    (files, network, data, training) and the weights are not touched.

    \b
    Examples:
      pattersolve-train evaluate --model models/all-12A --n 500 --out runs/card/all-12A
      pattersolve-train evaluate --model models/all-12A --n 500 --average-rotations \\
          --no-plots --out runs/card/all-12A-rotations
      pattersolve-train card --model models/all-12A --evaluation runs/card/all-12A \\
          --rotations runs/card/all-12A-rotations
    """
    from .card import refresh_card

    record = refresh_card(model_dir, evaluation_dir, rotations_dir)
    for key, check in record["reproduction"].items():
        ok = sum(1 for m in check["metrics"] if m["within"])
        click.echo(f"{key}: reproduces the card ({ok} metrics within the stated tolerance)")
    click.echo(f"{model_dir}: card.json and README.md re-rendered")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The PNG to write.")
def curves(runs: tuple[Path, ...], out: Path) -> None:
    """Learning curves of runs: validation CC and training loss against examples seen.

    RUNS are run folders of `fit`, finished or not (their config.json and metrics.jsonl);
    prints each run's last validation CC. Needs matplotlib (the `plot` extra).

    \b
    Examples:
      pattersolve-train curves runs/alaala-10A --out runs/alaala-10A/curves.png
      pattersolve-train curves runs/all-12A runs/all-12A-continued --out /tmp/curves.png
    """
    from .curves import plot_curves

    for c in plot_curves(list(runs), out):
        click.echo(c.one_line())
    click.echo(f"wrote {out}")


COMPARE_SHOWN = 8  # differing tensors `compare` prints without --list


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the per-tensor table as JSON.")
@click.option("--list", "list_all", is_flag=True, help="Print every tensor, not only those "
              "that differ.")
@click.option("--require-identical", is_flag=True,
              help="Exit with code 11 unless every tensor is bit-identical (for scripts).")
def compare(a: str, b: str, json_out: Path | None, list_all: bool,
            require_identical: bool) -> None:
    """Compare two networks' weights tensor by tensor (the reproduction check).

    A and B are run folders, model folders or model names. Where either is stored in fp16
    both are compared after export's fp16 cast. Trained parameters and BatchNorm running
    statistics (what `recalibrate` rewrites) are counted apart. Exit code 0 whether or not
    they match, unless --require-identical (then 11 when they differ).

    \b
    Examples:
      pattersolve-train compare runs/hard-tri-repro models/hard-tri
      pattersolve-train compare models/all-12A /tmp/models/all-12A --json /tmp/diff.json
    """
    from .compare import compare_weights

    result = compare_weights(a, b, json_out)
    click.echo(result.one_line())
    rows = [t for t in result.tensors if list_all or not t.identical]
    shown = rows if list_all else rows[:COMPARE_SHOWN]
    for t in shown:
        click.echo(f"  {'=' if t.identical else '!'} {t.name} ({t.kind}): max |diff| "
                   f"{t.max_abs:.3g}, relative RMS {t.rel_rms:.3g}")
    if len(rows) > len(shown):
        click.echo(f"  ... and {len(rows) - len(shown)} more that differ (--list prints "
                   "every tensor)")
    if require_identical and not result.identical:
        raise PattersolveError(f"{a} and {b} differ (--require-identical)",
                               "on another CPU kind or thread count weights differ; compare "
                               "the test metrics with `evaluate --expect` instead",
                               ExitCode.NOT_REPRODUCED)


@cli.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the comparison as JSON.")
def paired(baseline: Path, candidate: Path, json_out: Path | None) -> None:
    """Is CANDIDATE better than BASELINE on the same test maps? (paired bootstrap)

    BASELINE and CANDIDATE are evaluation folders (`evaluate --out`, or a run's evaluation/)
    of the same test maps. Per metric: both medians, their difference and its 95 % interval
    with the maps resampled jointly; "better" / "worse" where the interval excludes zero.
    Much less noisy than comparing two cards' numbers, each of which carries its maps'
    sampling noise. It judges these two weight files, not two recipes: two trainings of one
    config with different seeds can differ beyond it (BENCHMARKS.md, "A global layer").
    Exit code 0 either way.

    \b
    Examples:
      pattersolve-train evaluate --model models/hard-tri --n 200 --out runs/ev/shipped
      pattersolve-train evaluate --run runs/hard-tri-twin3 --n 200 --out runs/ev/candidate
      pattersolve-train paired runs/ev/shipped runs/ev/candidate
    """
    from .paired import paired_comparison, read_examples

    if json_out is not None and not json_out.resolve().parent.is_dir():
        raise PattersolveError(f"--json {json_out}: no folder {json_out.parent}",
                               "create it or give another path", ExitCode.OUTPUT)
    rows_a, rows_b = read_examples(baseline), read_examples(candidate)
    metrics = paired_comparison(rows_a, rows_b)
    click.echo(f"{baseline} -> {candidate}, {len(rows_a)} test maps (paired bootstrap, 95 %):")
    for m in metrics:
        lo, hi = m.interval
        click.echo(f"  {m.label}: {m.baseline:.4f} -> {m.candidate:.4f}, difference "
                   f"{m.difference:+.4f} ({lo:+.4f} to {hi:+.4f}): {m.verdict}")
    if json_out is not None:
        data = {"baseline": str(baseline), "candidate": str(candidate), "n": len(rows_a),
                "metrics": [{"key": m.key, "baseline": m.baseline, "candidate": m.candidate,
                             "difference": m.difference, "interval_95": list(m.interval),
                             "verdict": m.verdict} for m in metrics]}
        from .files import write_json_atomic

        write_json_atomic(json_out, data)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the click group, mapping user errors to one line + exit code."""
    try:
        cli.main(args=argv, prog_name="pattersolve-train", standalone_mode=False)
    except PattersolveError as exc:
        click.echo(f"pattersolve-train: error: {exc.one_line()}", err=True)
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
