"""Training-tree throughput: preparation, map generation and training steps.

Usage (from the repository root; ~1-2 min on 2 cores)::

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_training.py [--source DIR|TARBALL]
        [--entries 40] [--threads 2] [--skip-paper]

Prints a markdown table headed by the machine (platform, CPU count, torch version) and the
date. Preparation reads the first ``--entries`` coordinate files of the source (default: the
shared PDownB tarball) in one process; map generation is timed for one example at a time
with numpy (the reference physics of ``pattersolve.simulate``) and in batches of 16 with
``TorchMapMaker`` on CPU (and CUDA when available); training is the full step (maps +
forward + backward + Adam) with each config's network and cell on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tarfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _entries(source: Path, n: int) -> list[tuple[str, str, bytes]]:
    from pattersolve_train.prepare import entry_id

    out = []
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if entry_id(p.name) and len(out) < n:
                out.append((entry_id(p.name), p.name, p.read_bytes()))
        return out
    with tarfile.open(source, mode="r|*") as tar:
        for m in tar:
            if m.isfile() and entry_id(m.name):
                out.append((entry_id(m.name), m.name, tar.extractfile(m).read()))
                if len(out) >= n:
                    break
    return out


def bench_prepare(entries: list[tuple[str, str, bytes]], dialanine: bool) -> tuple[float, float,
                                                                                    list]:
    from pattersolve_train.prepare import PrepareOptions, extract_fragments, read_structure

    opts = PrepareOptions(dialanine=dialanine)
    t0 = time.perf_counter()
    frags = []
    for ident, name, data in entries:
        frags.extend(extract_fragments(read_structure(name, data), ident, opts))
    dt = time.perf_counter() - t0
    return len(entries) / dt, len(frags) / dt, frags


def bench_numpy_maps(frags: list, reps: int = 30) -> float:
    from pattersolve import fourier as F
    from pattersolve import simulate as S

    cell = S.orthorhombic_cell((10.0, 10.0, 10.0))
    hkl = F.miller_sphere(cell, 1.5)
    shape = F.grid_shape_for_spacing(cell, 0.5)
    t0 = time.perf_counter()
    for frag in frags[:reps]:
        p = S.place_fragment(frag.xyz, frag.elements, cell_lengths=(10.0, 10.0, 10.0))
        f = S.structure_factors(p.frac, frag.elements, 15.0, cell, hkl)
        S.scale_to_unit_range(F.density_map(hkl, f, shape, cell.volume))
        S.scale_to_unit_range(F.patterson_map(hkl, np.abs(f) ** 2, shape, cell.volume))
    return (time.perf_counter() - t0) / min(reps, len(frags))


def bench_torch_maps(frags: list, device: str, batch: int = 16, reps: int = 5) -> float:
    import torch
    from pattersolve_train.data import DataConfig, FragmentMaps

    ds = FragmentMaps(frags[: batch * reps], DataConfig(), 0, "train", device)
    ds.batch(range(batch), 0)  # warm-up (map maker, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for r in range(reps):
        ds.batch(range(r * batch, (r + 1) * batch), 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (batch * reps)


def bench_training(name: str, frags: list, batch: int, steps: int, bucket: bool = False
                   ) -> tuple[float, int, float, float]:
    """Examples/s of full training steps, parameters, forward passes per step, regroup time.

    Forward passes per step are counted over a whole chunk of 256 steps (placements only);
    with ``bucket`` the chunk's regrouping by cell is timed on its own (once per 256 steps)
    and the training rate over ``steps`` steps of the regrouped chunk.
    """
    import torch
    from pattersolve_train import train as T
    from pattersolve_train.data import FragmentMaps

    from pattersolve.network import count_parameters

    cfg = T.load_config(CONFIGS / f"{name}.toml")
    cfg = replace(cfg, data=replace(cfg.data, residues="all"), batch_size=batch, grad_accum=1,
                  bucket_by_cell=bucket, bucket_chunk=256)
    ds = FragmentMaps(frags, cfg.data, 0, "train")
    device = torch.device("cpu")
    model = T.build_model(cfg, device)
    opt = T.build_optimizer(cfg, model)
    spe = T.steps_per_epoch(cfg, len(ds))

    def step(s: int) -> None:
        idx, epoch = T.micro_batch_indices(ds, cfg, s, 0, spe)
        opt.zero_grad()
        T.forward_backward(model, [ds.batch(idx, epoch)], len(idx), cfg.loss_cc_weight, device)
        opt.step()

    step(spe)  # warm-up (epoch 1)
    t0 = time.perf_counter()
    T.micro_batch_indices(ds, cfg, 0, 0, spe)  # regroups the chunk when bucketing
    regroup = time.perf_counter() - t0
    passes = []
    for s in range(min(256, spe)):
        idx, epoch = T.micro_batch_indices(ds, cfg, s, 0, spe)
        passes.append(len({(p.cell.a, p.cell.b, p.cell.c)
                           for p in (ds.placement(i, epoch) for i in idx)}))
    t0 = time.perf_counter()
    for s in range(steps):
        step(s)
    return (steps * batch / (time.perf_counter() - t0), count_parameters(model),
            float(np.mean(passes)), regroup)


def main() -> None:
    import torch
    from pattersolve_train.prepare import default_source

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument("--entries", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-paper", action="store_true", help="skip the paper_1b network")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source = args.source or default_source()
    if not source.exists():
        raise SystemExit(f"{source} not found: give --source DIR|TARBALL of PDB files")

    entries = _entries(source, args.entries)
    rows = []
    e_rate, f_rate, frags = bench_prepare(entries, dialanine=False)
    rows.append(("prepare, all residues, 1 process", f"{e_rate:.1f} entries/s, "
                 f"{f_rate:.0f} fragments/s"))
    e_rate, f_rate, ala = bench_prepare(entries, dialanine=True)
    rows.append(("prepare, --dialanine, 1 process", f"{e_rate:.1f} entries/s, "
                 f"{f_rate:.0f} fragments/s"))
    t = bench_numpy_maps(ala)
    rows.append(("maps, numpy, 10 A cube 1.5 A 20^3, one example, 1 core",
                 f"{t * 1e3:.2f} ms/example"))
    t = bench_torch_maps(ala, "cpu")
    rows.append((f"maps, TorchMapMaker CPU, batch 16, {args.threads} threads",
                 f"{t * 1e3:.2f} ms/example"))
    if torch.cuda.is_available():
        t = bench_torch_maps(ala, "cuda")
        rows.append(("maps, TorchMapMaker CUDA, batch 16", f"{t * 1e3:.3f} ms/example"))
    ala_cfgs = [("tiny", 8, 10), ("cpu_1b", 16, 4)]
    if not args.skip_paper:
        ala_cfgs.append(("paper_1b", 4, 2))
    for name, batch, steps in ala_cfgs:
        rate, n_par, _, _ = bench_training(name, ala, batch, steps)
        rows.append((f"training {name} ({n_par / 1e6:.2f} M params), batch {batch}, CPU "
                     f"{args.threads} threads", f"{rate:.1f} examples/s"))
    from pattersolve_train.prepare import PrepareOptions, extract_fragments, read_structure

    tri = [f for ident, name, data in entries
           for f in extract_fragments(read_structure(name, data), ident,
                                      PrepareOptions(length=3))]
    for bucket in (False, True):
        rate, n_par, passes, regroup = bench_training("hard_tri", tri, 64, 6, bucket)
        rows.append((f"training hard_tri ({n_par / 1e6:.2f} M params, packed cells), batch 64, "
                     f"{'cell buckets (256-step chunks)' if bucket else 'no buckets'}, CPU "
                     f"{args.threads} threads", f"{rate:.1f} examples/s, {passes:.1f} forward "
                     f"passes/step" + (f", regrouping {regroup:.2f} s per chunk" if bucket
                                       else "")))

    print(f"# pattersolve-train benchmark, {datetime.date.today().isoformat()}\n")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}; "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
          f"source: {source.name}, {len(entries)} entries\n")
    print("| what | rate |\n|---|---|")
    for what, rate in rows:
        print(f"| {what} | {rate} |")


if __name__ == "__main__":
    main()
