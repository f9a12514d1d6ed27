"""Rendering throughput of the procedural worlds on one CPU thread.

    python benchmarks/bench_worlds.py                      # every world at its own size, 1000 images each, best of 3
    python benchmarks/bench_worlds.py --sizes 64 128 256 --n 300 --materialize

Without --sizes each world renders at its default size: 64 px for the aerial and object worlds, 128 px for the
detection world (a VOC-like scene at 64 px leaves its smallest objects 6 px wide). Prints images/s by wall clock and
by the process's CPU time (the two differ when other processes share the cores; CPU time is the single-core
throughput). Goal: >= 300 images/s at 64 px.
"""
import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from workbench.data.worlds import SIZES, WORLDS, make_world, materialize


def bench(world, n: int, repeats: int) -> dict:
    world[0]   # build the size's noise bank outside the timing
    best_wall = best_cpu = 0.0
    for r in range(repeats):
        start = r * n   # fresh indices each repeat: nothing is cached per sample anyway
        t, c = time.perf_counter(), time.process_time()
        for i in range(start, start + n): world[i]
        best_wall = max(best_wall, n / (time.perf_counter() - t))
        best_cpu = max(best_cpu, n / (time.process_time() - c))
    return dict(wall_images_per_s=round(best_wall, 1), cpu_images_per_s=round(best_cpu, 1))


def bench_materialize(world, n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t, c = time.perf_counter(), time.process_time()
        materialize(world, n, Path(d) / "out", progress=False)
        return dict(materialize_wall_images_per_s=round(n / (time.perf_counter() - t), 1),
                    materialize_cpu_images_per_s=round(n / (time.process_time() - c), 1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images per timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", choices=SIZES, help="default: each world's own size")
    p.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    p.add_argument("--materialize", action="store_true", help="also time writing the COCO layout (PNG + RLE)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)
    rows = []
    runs = ([(size, name) for size in args.sizes for name in args.worlds] if args.sizes else
            [(inspect.signature(WORLDS[name]).parameters["size"].default, name) for name in args.worlds])
    for size, name in runs:
        world = make_world(name, size=size, seed=0)
        row = dict(world=name, size=size, n=args.n, torch_threads=torch.get_num_threads(), **bench(world, args.n, args.repeats))
        if args.materialize: row.update(bench_materialize(world, min(args.n, 300)))
        rows.append(row)
        extra = (f"  materialize {row['materialize_cpu_images_per_s']:7.1f} img/s (cpu)" if args.materialize else "")
        print(f"{name:9s} {size:4d} px  render {row['cpu_images_per_s']:7.1f} img/s (cpu)  {row['wall_images_per_s']:7.1f} img/s (wall){extra}", flush=True)
    if args.json: args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
