"""Do the shipped models' cards reproduce? ``evaluate --model --expect`` on every model.

For each model in models/ this evaluates the shipped weights (fp16, as `pattersolve` loads
them) on the test split of the shards its card names and checks the result against the card
with :func:`pattersolve_train.reproduce.check_reproduction` (median CCs within 0.01, median
phase errors within 1 deg). The shards must hash to the card's training data: build them first
with the prepare commands in README / the models' configs (``data/shards/{alaala,all2,tri}``).

    python bench/bench_cards.py [--models alaala-10A,all-12A,hard-tri] [--rotations] [--json PATH]

``--rotations`` also checks each card's rotation-averaged evaluation (``evaluate
--average-rotations``: the prediction averaged over the cell's axis permutations, what
``pattersolve --average-rotations`` does), a second row per model.

Prints a markdown table with the machine and date, and beside each card the 95 % bootstrap
interval of its medians over the test maps (their sampling noise, which the reproduction
tolerance is not: a re-run evaluates the same maps); exit code 11 if a card is not reproduced.
About 1.3 minutes on the 2-core machine, 16 with ``--rotations``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: --n each card was evaluated with, for cards from before `n_requested` was recorded
#: (fragments that do not fit a 12 A cube are skipped: all-12A's --n 500 gave n = 489).
CARD_N_REQUESTED = {"alaala-10A": 500, "all-12A": 500, "hard-tri": 200}


def main() -> None:
    from pattersolve_train.evaluate import evaluate
    from pattersolve_train.reproduce import card_evaluation, check_reproduction

    from pattersolve.errors import ExitCode

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CARD_N_REQUESTED))
    ap.add_argument("--rotations", action="store_true",
                    help="Also check the cards' rotation-averaged evaluations.")
    ap.add_argument("--json", default=None, help="Write every check as JSON here.")
    args = ap.parse_args()
    os.chdir(REPO)  # the cards name their shards relative to the repository
    rows, checks = [], []
    kinds = (False, True) if args.rotations else (False,)
    for name, rotations in [(n, r) for n in args.models.split(",") for r in kinds]:
        model = REPO / "models" / name
        label, expected = card_evaluation(model, average_rotations=rotations)
        n = expected.get("n_requested") or CARD_N_REQUESTED[name]
        t0 = time.time()
        summary = evaluate(model_dir=model, shards=Path(expected["shards"]), n_examples=n,
                           out=Path("runs") / "check" / (name + "-rotations" * rotations),
                           plots=False, average_rotations=rotations)
        check = check_reproduction(summary.data, expected, label)
        name_shown = name + " (rotations averaged)" * rotations
        print("\n".join(check.lines()), file=sys.stderr, flush=True)
        m = {c.name: c for c in check.metrics}
        ci = summary.data["intervals_95"]
        rows.append((name_shown, check.n, m["median_cc"], m["median_phase_error_weighted"],
                     m["median_map_cc"], check.reproduced, time.time() - t0,
                     ci["median_cc"], ci["median_phase_error_weighted"]))
        checks.append({**check.as_json(), "average_rotations": rotations, "intervals_95": ci,
                       "seconds": time.time() - t0})
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {dt.date.today().isoformat()}")
    print()
    print("| model | test maps | median CC: card / evaluate | phase error w (deg): card / "
          "evaluate | map CC: card / evaluate | reproduced | sampling noise: 95 % interval of "
          "the median CC / phase error | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, cc, err, mcc, ok, sec, ci_cc, ci_err in rows:
        print(f"| {name} | {n} | {cc.expected:.4f} / {cc.measured:.4f} | {err.expected:.2f} / "
              f"{err.measured:.2f} | {mcc.expected:.4f} / {mcc.measured:.4f} | "
              f"{'yes' if ok else 'NO'} | {ci_cc[0]:.3f}-{ci_cc[1]:.3f} / "
              f"{ci_err[0]:.1f}-{ci_err[1]:.1f} | {sec:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(checks, indent=1) + "\n")
    if not all(r[5] for r in rows):
        sys.exit(int(ExitCode.NOT_REPRODUCED))


if __name__ == "__main__":
    main()
