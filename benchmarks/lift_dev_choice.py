"""The choice of LiFT's training image size for the object-world ViTs, made on a dev split (never the test images of
nbs/47_lift): LiFT on the DINO-style object ViT trained with the recipe of 47_lift's bench profile (400 steps of 32,
lr 1e-3, cosine loss, 2000 object-world images of seed 0) at each candidate, then PCK@0.1 on warped pairs of object-world
seed 5 and J&F on procedural videos of seed 6 (47_lift tests on seeds 1 and 2), against bilinear upsampling.

Candidates: train side 64 (LiFT learns 16 → 32 and 32 → 64 px), 128 (32 → 64, 64 → 128), and a mix of 64 / 128 / 256
drawn per step (`train_lift(sizes=...)`, batches of 16 so that the 256 px steps fit the budget).

    python benchmarks/lift_dev_choice.py [--steps 400] [--pairs 100] [--videos 15] [--threads 1]
"""
import argparse
import json
import time

import torch

from workbench.data.videos import ObjectVideos
from workbench.data.worlds import ObjectWorld
from workbench.eval.video import propagation_scores
from workbench.methods import lift as L
from workbench.methods.features import warp_pairs
from workbench.models.registry import load_model
from workbench.models.vits import input_config

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--pairs", type=int, default=100)
ap.add_argument("--videos", type=int, default=15)
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(args.threads)
vit = load_model("checkpoints/object_vit_dino.safetensors").model.eval()
cfg = input_config(vit)
dev_world = ObjectWorld(size=128, seed=5)
pairs = warp_pairs([dev_world[i] for i in range(args.pairs)], seed=0)
vids = ObjectVideos(args.videos, size=128, frames=12, seed=6)
videos = [vids[i] for i in range(len(vids))]
CANDIDATES = {"train 64": dict(side=64, sizes=None, batch=32), "train 128": dict(side=128, sizes=None, batch=32),
              "mix 64/128/256": dict(side=256, sizes=[64, 128, 256], batch=16)}
fns = {"bilinear x2": L.bilinear_features(vit, 2)}
for name, c in CANDIDATES.items():
    pool, _ = ObjectWorld(size=c["side"], seed=0).images(2000, progress=False)
    t = time.time()
    r = L.train_lift(vit, L.new_lift("small", seed=0), pool, steps=args.steps, batch_size=c["batch"], lr=1e-3, seed=0,
                     sizes=c["sizes"], device="cpu")
    print(f"{name}: trained in {time.time() - t:.0f} s", flush=True)
    fns[f"LiFT, {name}"] = L.lift_features(vit, r.model)
rows = []
for k, fn in fns.items():
    row = dict(features=k)
    for s in (32, 64, 128):
        row[f"pck@{s}"] = round(100 * float(L.feature_pck(fn, pairs, s, cfg["mean"], cfg["std"]).pck(0.1)[0]), 2)
        row[f"jf@{s}"] = round(100 * propagation_scores(fn, videos, s, cfg["mean"], cfg["std"]).JF_mean, 2)
    rows.append(row)
    print(json.dumps(row), flush=True)
print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
for r in rows: print("| " + " | ".join(str(v) for v in r.values()) + " |")
