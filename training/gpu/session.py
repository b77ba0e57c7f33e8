"""Train the release models on a lent GPU under a fixed wall-clock budget (two device calls).

This is orchestration only: every model is trained by ``pattersolve-train fit`` from a config
in training/configs/, so the runs can be reproduced without this script (see README.md here).

``start`` (first call):
    1. unpack the coordinate shards carried as ``.gpu/<shards>.tar.xz`` (train and val splits
       only: the test split never travels to the training machine);
    2. run the GPU tests (tests/test_gpu.py) and log them;
    3. probe: start every config at once for ``--probe-steps`` steps and read the step rate
       each reaches while they share the GPU;
    4. set each config's ``max_steps`` = rate x ``--budget`` seconds, write the resolved
       configs, and start the real runs detached (``setsid``), so they outlive this call;
    5. before the call's deadline, snapshot every run (weights, metrics, config) to ``$OUT``.

``start --resume NAME`` also (or only) continues runs carried back in: each
``.gpu/runs/NAME.tar`` (or its ``.partIofN`` files) is restored and run with ``fit --resume``
to the end of its own schedule; no probe, its ``max_steps`` stays what it was.

``start --stop`` (a session with one call): at the deadline every run is sent SIGTERM, writes
a checkpoint of the step it is at and exits; then the snapshot.

``finish`` (second call, while the machine is still warm): wait for the runs to end and
snapshot them again.

A snapshot is one tar per run, ``<name>.tar``, split into ``<name>.tar.partIofN`` files of at
most 15 MiB when larger (``pattersolve_train.snapshot``): ``config.json``, ``metrics.jsonl``
and the full checkpoint (weights, optimiser moments, RNG states), so the run resumes exactly
on the next machine. Where the full checkpoints of all runs would not fit what a call may
return (8 files, 64 MiB, the call's logs included), the later runs keep their fp32 weights
only: those can be exported, evaluated and continued with ``fit --init RUN``, not resumed.

``restore PATH... --into DIR`` (here, after a call): lay the returned snapshots out as run
folders for ``evaluate --run``, ``export --run`` or ``fit --out RUN --resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["gpu_1b_paper", "gpu_1b", "gpu_2", "gpu_hard"]  # --configs overrides
INIT: dict[str, str] = {}  # config name -> shipped model to start from (--init)
RESUME: list[str] = []  # runs carried in as snapshots, continued with fit --resume
RUNS = REPO / "runs" / "gpu"
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f} s] {msg}", flush=True)


def env() -> dict[str, str]:
    e = dict(os.environ)
    extra = [str(REPO), str(REPO / "training")]
    e["PYTHONPATH"] = os.pathsep.join(extra + [e.get("PYTHONPATH", "")])
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def unpack_shards() -> None:
    for archive in sorted((REPO / ".gpu").glob("*.tar.xz")):
        target = REPO / "data" / "shards" / archive.name.removesuffix(".tar.xz")
        if (target / "manifest.json").is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(target.parent, filter="data")
        log(f"unpacked {archive.name}")


def with_max_steps(text: str, steps: int) -> str:
    return re.sub(r"(?m)^max_steps = \d+", f"max_steps = {steps}", text)


def fit_command(config: Path, out: Path, extra: list[str], name: str) -> list[str]:
    init = ["--init", INIT[name]] if name in INIT else []
    return [sys.executable, "-m", "pattersolve_train.cli", "fit", "--config", str(config),
            "--out", str(out), "--quiet", *init, *extra]


def read_rates(run: Path, first_step: int) -> float:
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s]
    rates = [r["examples_per_s"] for r in rows
             if "examples_per_s" in r and r["step"] > first_step]
    rates.sort()
    return rates[len(rates) // 2] if rates else float("nan")


def probe(steps: int) -> dict[str, float]:
    """Examples per second of each config while all of them run together."""
    procs = {}
    for name in CONFIGS:
        out = Path("/tmp/probe") / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        procs[name] = subprocess.Popen(
            fit_command(REPO / "training" / "configs" / f"{name}.toml", out,
                        ["--max-steps", str(steps)], name),
            env=env(), stdout=subprocess.DEVNULL, stderr=open(f"/tmp/probe-{name}.log", "w"))
    for name, p in procs.items():
        if p.wait() != 0:
            text = Path(f"/tmp/probe-{name}.log").read_text()
            raise SystemExit(f"probe of {name} failed: {text[-2000:]}")
    return {name: read_rates(Path("/tmp/probe") / name, steps // 3) for name in CONFIGS}


MAX_FILES, MAX_BYTES = 8, 64 * 2**20  # what one call may return (device README)


def snapshot(out_dir: Path) -> None:
    """One tar (or its parts) per run: full checkpoints where the return limits allow."""
    sys.path[:0] = [str(REPO), str(REPO / "training")]
    from pattersolve_train.snapshot import pack_run, plan_snapshots, snapshot_size

    names = CONFIGS + RESUME
    runs = [RUNS / n for n in names if (RUNS / n / "checkpoint.json").is_file()]
    ours = {p.name for r in runs for p in out_dir.glob(f"{r.name}.tar*")}
    others = [p for p in out_dir.iterdir() if p.is_file() and p.name not in ours]
    # full checkpoints first for resumed runs (they are the long ones), then in config order
    runs.sort(key=lambda r: r.name not in RESUME)
    sizes = {r.name: (snapshot_size(r), snapshot_size(r, weights_only=True)) for r in runs}
    plan = plan_snapshots(sizes, max_files=MAX_FILES - len(others) - 1,  # -1: headroom
                          max_bytes=MAX_BYTES - sum(p.stat().st_size for p in others) - 2**20)
    for run in runs:
        paths = pack_run(run, out_dir, weights_only=plan[run.name] == "weights")
        meta = json.loads((run / "checkpoint.json").read_text())
        log(f"snapshot {run.name} ({plan[run.name]}): step {meta['step']}/"
            f"{meta['total_steps']}, {len(paths)} file(s), "
            f"{sum(p.stat().st_size for p in paths) / 2**20:.1f} MiB")


def restore_carried() -> None:
    """Restore every run named by --resume from ``.gpu/runs/``."""
    sys.path[:0] = [str(REPO), str(REPO / "training")]
    from pattersolve_train.snapshot import restore_run

    for name in RESUME:
        if (RUNS / name / "checkpoint.json").is_file():
            continue  # already restored on this (warm) machine
        found = sorted((REPO / ".gpu" / "runs").glob(f"{name}.tar*"))
        if not found:
            raise SystemExit(f"--resume {name}: no .gpu/runs/{name}.tar* carried")
        run = restore_run(found[0], RUNS)
        meta = json.loads((run / "checkpoint.json").read_text())
        log(f"restored {name}: step {meta['step']}/{meta['total_steps']}")


def stop_runs(grace: float = 90.0) -> None:
    """SIGTERM every run (each checkpoints its current step and exits), then wait."""
    import signal

    pids = json.loads((RUNS / "pids.json").read_text())
    for name in running():
        os.kill(pids[name], signal.SIGTERM)
    t_end = time.time() + grace
    while running() and time.time() < t_end:
        time.sleep(1)
    log(f"stopped; still running: {running()}")


def running() -> list[str]:
    pids = json.loads((RUNS / "pids.json").read_text())
    return [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]


def start(args: argparse.Namespace) -> None:
    out = Path(args.out)
    unpack_shards()
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_gpu.py"], cwd=REPO, env=env(), capture_output=True,
                          text=True)
    (out / "pytest_gpu.log").write_text(test.stdout + test.stderr)
    log("GPU tests: " + (test.stdout.strip().splitlines() or ["?"])[-1])
    rates = probe(args.probe_steps) if CONFIGS else {}
    RUNS.mkdir(parents=True, exist_ok=True)
    restore_carried()
    plan, pids = {}, {}
    for name in RESUME:
        logf = open(RUNS / f"{name}.log", "a")
        p = subprocess.Popen([sys.executable, "-m", "pattersolve_train.cli", "fit", "--out",
                              str(RUNS / name), "--resume", "--quiet"], env=env(), stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True)
        pids[name] = p.pid
        plan[name] = {"resumed": True}
    for name in CONFIGS:
        text = (REPO / "training" / "configs" / f"{name}.toml").read_text()
        batch = int(re.search(r"(?m)^batch_size = (\d+)", text).group(1))
        steps = max(100, int(rates[name] * args.budget / batch) // 10 * 10)
        resolved = RUNS / f"{name}.toml"
        resolved.write_text(with_max_steps(text, steps))
        plan[name] = {"examples_per_s": rates[name], "max_steps": steps, "batch": batch}
        logf = open(RUNS / f"{name}.log", "w")
        p = subprocess.Popen(fit_command(resolved, RUNS / name, [], name), env=env(),
                             stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        pids[name] = p.pid
    (RUNS / "pids.json").write_text(json.dumps(pids))
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    log(f"plan: {json.dumps(plan)}")
    full = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"],
                            cwd=REPO, env=env(), stdout=open(out / "pytest_full.log", "w"),
                            stderr=subprocess.STDOUT)
    deadline = T0 + args.deadline
    while time.time() < deadline and running():
        time.sleep(5)
    if full.poll() is None:
        full.kill()
    if args.stop:
        stop_runs()
    snapshot(out)
    for name in CONFIGS + RESUME:
        tail = (RUNS / f"{name}.log").read_text()[-400:]
        log(f"{name} log tail: {tail!r}")


def finish(args: argparse.Namespace) -> None:
    out = Path(args.out)
    deadline = T0 + args.deadline
    while time.time() < deadline and running():
        time.sleep(5)
    log(f"still running: {running()}")
    if args.stop:
        stop_runs()
    for name in CONFIGS + RESUME:
        (out / f"{name}.log").write_text((RUNS / f"{name}.log").read_text()[-20000:])
    snapshot(out)


def restore(args: argparse.Namespace) -> None:
    """Here, after a call: returned snapshots -> run folders under --into."""
    sys.path[:0] = [str(REPO), str(REPO / "training")]
    from pattersolve_train.snapshot import restore_run

    seen: set[str] = set()
    for path in args.paths:
        stem = re.sub(r"\.part\d+of\d+$", "", Path(path).name)
        if stem in seen:
            continue
        seen.add(stem)
        run = restore_run(path, args.into)
        meta = json.loads((run / "checkpoint.json").read_text())
        kind = "weights only" if meta.get("weights_only") else "full, resumable"
        log(f"{run}: step {meta['step']}/{meta['total_steps']} ({kind})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["start", "finish", "restore"])
    ap.add_argument("paths", nargs="*", help="restore: returned <name>.tar or .part files")
    ap.add_argument("--into", default="runs/gpu", help="restore: folder for the run folders")
    ap.add_argument("--resume", default="",
                    help="comma-separated runs carried as .gpu/runs/<name>.tar* to continue "
                    "with fit --resume")
    ap.add_argument("--stop", action="store_true",
                    help="at the deadline stop the runs (each checkpoints) before the snapshot")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--budget", type=float, default=900.0,
                    help="training seconds per run (all runs share the GPU)")
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--deadline", type=float, default=560.0,
                    help="seconds after which this call snapshots and returns")
    ap.add_argument("--configs", default=None,
                    help="comma-separated config names (training/configs/<name>.toml) to "
                    f"start; default {','.join(CONFIGS)}, or none with --resume")
    ap.add_argument("--init", default="",
                    help="comma-separated NAME=MODEL: start config NAME from a shipped model "
                    "(fit --init), e.g. gpu_2_robust=all-12A")
    args = ap.parse_args()
    if args.configs is None:
        args.configs = "" if args.resume else ",".join(CONFIGS)
    CONFIGS[:] = [c for c in args.configs.split(",") if c]
    INIT.update(item.split("=", 1) for item in args.init.split(",") if item)
    RESUME[:] = [r for r in args.resume.split(",") if r]
    if args.stage == "restore":
        restore(args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)
    (start if args.stage == "start" else finish)(args)


if __name__ == "__main__":
    main()
