"""``fit`` launched as training/README.md says for several GPUs: torchrun, here on a CPU (gloo).

Two processes train a few steps of ``tiny.toml``; the run is then resumed by one process, as a
run moved to another machine would be (which examples make up a step does not depend on the
number of processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pattersolve_train.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _state(run: Path) -> dict:
    return json.loads((run / "checkpoint.json").read_text())


@pytest.mark.slow
def test_torchrun_fit_then_resume_in_one_process(tmp_path: Path, train_shards: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # `torchrun` is `python -m torch.distributed.run`; --standalone picks a free port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "pattersolve_train.cli", "fit",
           "--config", str(CONFIGS / "tiny.toml"), "--shards", str(train_shards),
           "--out", str(run), "--max-steps", "4", "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{run}: step 4/" in done.stdout  # printed once, by process 0
    assert done.stdout.count("step 4/") == 1
    state = _state(run)
    assert (state["step"], state["world_size"]) == (4, 2)
    assert main(["fit", "--out", str(run), "--resume", "--max-steps", "6", "--quiet"]) == 0
    state = _state(run)
    assert (state["step"], state["world_size"]) == (6, 1)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6
