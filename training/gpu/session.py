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

``finish`` (second call, while the machine is still warm): wait for the runs to end and
snapshot them again.

A snapshot is one tar per run, ``<name>.tar``: ``config.json``, ``metrics.jsonl``,
``checkpoint.json`` and a weights-only ``checkpoint.safetensors`` (fp32 ``model.*``; the
optimiser moments stay on the device: they would not fit the 16 MiB per file that comes back).
``pattersolve-train export --run`` and ``evaluate --run`` read such a run directory.
"""

from __future__ import annotations

import argparse
import io
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


def snapshot(out_dir: Path) -> None:
    """One tar per run: config, metrics, checkpoint JSON and weights-only safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path[:0] = [str(REPO), str(REPO / "training")]
    from pattersolve.runtime import sha256_file

    for run in sorted(p for p in RUNS.iterdir() if p.is_dir() and p.name in CONFIGS):
        if not (run / "checkpoint.json").is_file():
            continue
        for _ in range(10):  # a checkpoint may be half replaced (tensors, then JSON)
            meta = json.loads((run / "checkpoint.json").read_text())
            if sha256_file(run / "checkpoint.safetensors") == meta["sha256"]:
                break
            time.sleep(2)
        else:
            raise SystemExit(f"{run}: checkpoint and JSON keep disagreeing")
        tensors = load_file(str(run / "checkpoint.safetensors"))
        model = {k: (v.float() if torch.is_floating_point(v) else v).contiguous()
                 for k, v in tensors.items() if k.startswith("model.")}
        tmp = Path("/tmp") / f"{run.name}-weights.safetensors"
        save_file(model, str(tmp))
        meta["sha256"] = sha256_file(tmp)
        meta["weights_only"] = True
        with tarfile.open(out_dir / f"{run.name}.tar", "w") as tar:
            tar.add(tmp, arcname=f"{run.name}/checkpoint.safetensors")
            for name in ("config.json", "metrics.jsonl"):
                tar.add(run / name, arcname=f"{run.name}/{name}")
            data = (json.dumps(meta, indent=1) + "\n").encode()
            info = tarfile.TarInfo(f"{run.name}/checkpoint.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        log(f"snapshot {run.name}: step {meta['step']}/{meta['total_steps']}")


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
    rates = probe(args.probe_steps)
    RUNS.mkdir(parents=True, exist_ok=True)
    plan, pids = {}, {}
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
    snapshot(out)
    for name in CONFIGS:
        tail = (RUNS / f"{name}.log").read_text()[-400:]
        log(f"{name} log tail: {tail!r}")


def finish(args: argparse.Namespace) -> None:
    out = Path(args.out)
    deadline = T0 + args.deadline
    while time.time() < deadline and running():
        time.sleep(5)
    log(f"still running: {running()}")
    for name in CONFIGS:
        (out / f"{name}.log").write_text((RUNS / f"{name}.log").read_text()[-20000:])
    snapshot(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["start", "finish"])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--budget", type=float, default=900.0,
                    help="training seconds per run (all runs share the GPU)")
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--deadline", type=float, default=560.0,
                    help="seconds after which this call snapshots and returns")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated config names (training/configs/<name>.toml)")
    ap.add_argument("--init", default="",
                    help="comma-separated NAME=MODEL: start config NAME from a shipped model "
                    "(fit --init), e.g. gpu_2_robust=all-12A")
    args = ap.parse_args()
    CONFIGS[:] = args.configs.split(",")
    INIT.update(item.split("=", 1) for item in args.init.split(",") if item)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)
    (start if args.stage == "start" else finish)(args)


if __name__ == "__main__":
    main()
