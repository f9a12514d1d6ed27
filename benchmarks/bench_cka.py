"""Benchmark: the full 12 × 12 layer minibatch CKA of a ViT-B/16 with `workbench.methods.cka.CKAAccumulator` against a
public peer implementation, on the same cached features and the same minibatches.

What is timed is the CKA only: per-layer features are extracted (or synthesised) once, saved, and every run
(ours, each peer) loads the same file in a fresh subprocess and streams the same minibatches of example indices
through a `torch.utils.data.DataLoader`. The peers take features through their public model API: a stand-in
module (`FeatureReplay`) returns the cached features of a batch through named identity layers that the peer hooks.

Feature sets:
- `synthetic`: 12 layers × N × 768 float32 with ViT-B/16 block-output shape (a random walk across layers with a large
  per-layer offset, like a residual stream), N = --n (default 5000). For timing at full size on CPU.
- `vit-cls`, `vit-mean`: the 12 block outputs of timm `vit_base_patch16_224` (random weights, eval) on --vit-n random
  images at 224 px: the CLS token, and the mean of the 196 patch tokens. For |ΔCKA| on real activations.

Peers (installed outside the project, e.g. `pip install --no-deps --target /tmp/peer torch_cka==0.21 pytorch-cka==1.1.3`,
found through --peer-path or $WORKBENCH_CKA_PEER_PATH):
- `torch_cka` 0.21 (`torch_cka.CKA(...).compare(loader)`): minibatch CKA with the same unbiased HSIC_1 (its `_HSIC`,
  Nguyen et al. 2021 eq. 3), one pair at a time, in the features' dtype (float32). Also run with float64 features and
  torch's default dtype set to float64 (an accuracy reference of the same estimator; timed too).
- `pytorch_cka` 1.1.3 (`cka.compute_cka(model, model, loader)`): minibatch CKA with unbiased HSIC, vectorised over layer
  pairs, float32; clamps CKA to [0, 1].

Ours runs twice: `ours`, the float64 reference (`gram_dtype=torch.float64`: Gram matrices in float64), and `ours float32
Grams`, the library's default since 2026-12-07 (`gram_dtype=torch.float32`: features centered in float64, their product in
float32, HSIC in float64). Every |ΔCKA| is against the float64 reference.

Timing: best and median wall time over --repeats fresh subprocesses per implementation (interleaved). Peak memory: the
high-water mark of resident memory during the run above the resident memory before it (Linux VmHWM reset through
/proc/self/clear_refs), or on CUDA torch.cuda.max_memory_allocated above the memory allocated before the run.

Usage: python benchmarks/bench_cka.py --peer-path /tmp/peer [--n 5000] [--batch 250] [--device cpu|cuda] [--vit-n 500] [--threads 1]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

PEERS = ("torch_cka", "pytorch_cka")
PEER_MODULES = {"torch_cka": "torch_cka", "pytorch_cka": "cka"}
PEER_DISTS = {"torch_cka": "torch_cka", "pytorch_cka": "pytorch-cka"}


# ---------------------------------------------------------------- features
def synthetic_features(n: int, layers: int = 12, width: int = 768, seed: int = 0) -> torch.Tensor:
    "(layers, n, width) float32: a random walk across layers plus a large per-layer offset shared by all examples."
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g)
    out = torch.empty(layers, n, width)
    for l in range(layers):
        h = 0.8 * h + 0.6 * torch.randn(n, width, generator=g)
        out[l] = h + 4.0 * torch.randn(width, generator=g)
    return out


def vit_features(n: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    "Block outputs of a random-weight ViT-B/16 on `n` random 224 px images: {'vit-cls', 'vit-mean'} → (12, n, 768)."
    import timm
    from workbench.methods.cka import token_features
    from workbench.models.hooks import Trace
    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    layers = [f"blocks.{i}" for i in range(len(model.blocks))]
    g = torch.Generator().manual_seed(seed)
    cls = torch.empty(len(layers), n, model.embed_dim)
    mean = torch.empty_like(cls)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        x = torch.rand(min(batch, n - i), 3, 224, 224, generator=g)
        with torch.inference_mode(), Trace(model, layers) as tr:
            model(x)
        for l, name in enumerate(layers):
            cls[l, i:i + len(x)] = token_features(tr[name].output, "cls")
            mean[l, i:i + len(x)] = token_features(tr[name].output, "mean")
        print(f"  extracted {i + len(x)}/{n} images ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return {"vit-cls": cls, "vit-mean": mean}


# ---------------------------------------------------------------- worker side
class FeatureReplay(nn.Module):
    "Stands in for the ViT: for a batch of example indices, passes the cached features of every layer through `layers.i`."
    def __init__(self, feats: torch.Tensor):
        super().__init__()
        self.feats = feats
        self.layers = nn.ModuleList(nn.Identity() for _ in range(feats.shape[0]))

    def forward(self, idx):
        for l, layer in enumerate(self.layers): layer(self.feats[l, idx])
        return idx


def _rss_reset() -> int | None:
    "Reset the resident-memory high-water mark; return the resident memory now (kB), or None where unsupported."
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS")
    except OSError:
        return None


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"): return int(line.split()[1])
    raise KeyError(key)


def run_ours(feats, loader, device, gram_dtype=torch.float64):
    from workbench.methods.cka import CKAAccumulator
    acc = CKAAccumulator(feats.shape[0], device=device, gram_dtype=gram_dtype)
    for (idx,) in loader:
        idx = idx.to(feats.device)
        acc.update([feats[l, idx] for l in range(feats.shape[0])])
    return acc.compute()


def run_torch_cka(feats, loader, device):
    from torch_cka import CKA
    names = [f"layers.{i}" for i in range(feats.shape[0])]
    cka = CKA(FeatureReplay(feats), FeatureReplay(feats), "ViT-B/16 (a)", "ViT-B/16 (b)", names, names, device=str(device))
    cka.compare(loader, loader)
    return cka.export()["CKA"]


def run_pytorch_cka(feats, loader, device):
    from cka import compute_cka
    names = [f"layers.{i}" for i in range(feats.shape[0])]
    model = FeatureReplay(feats)
    return compute_cka(model, model, loader, layers=names, device=device, progress=False)[0]


def run_ours_float32_grams(feats, loader, device):
    return run_ours(feats, loader, device, torch.float32)


RUNNERS = {"ours": run_ours, "ours float32 Grams": run_ours_float32_grams, "torch_cka": run_torch_cka,
           "pytorch_cka": run_pytorch_cka}


def worker(args):
    "One timed run in this fresh process; prints a JSON line and saves the CKA matrix."
    import warnings
    warnings.filterwarnings("ignore")
    if args.threads: torch.set_num_threads(args.threads)
    if args.peer_path: sys.path.insert(0, args.peer_path)
    device = torch.device(args.device)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    if dtype == torch.float64 and not args.worker.startswith("ours"):
        torch.set_default_dtype(torch.float64)   # the peers make their `ones` and accumulators in the default dtype
    feats = torch.load(args.feats, weights_only=True).to(device=device, dtype=dtype)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(feats.shape[1])), batch_size=args.batch)
    warm = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(16)), batch_size=8)
    run = RUNNERS[args.worker]
    run(feats[:2], warm, device)                  # initialise BLAS / OpenMP / CUDA on a tiny input
    if device.type == "cuda":
        torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_reset()
    t0 = time.perf_counter()
    m = run(feats, loader, device)
    if device.type == "cuda": torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if device.type == "cuda": peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    elif base is not None: peak_mb = (_status_kb("VmHWM") - base) / 1024
    else: peak_mb = float("nan")
    torch.save(torch.as_tensor(m).detach().double().cpu(), args.result)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "threads": torch.get_num_threads()}))


# ---------------------------------------------------------------- parent side
def spawn(impl, feats_path, args, dtype="float32") -> tuple[dict, torch.Tensor | None]:
    "Run `impl` once in a fresh process; a run that fails reports its error instead of a matrix."
    with tempfile.TemporaryDirectory() as d:
        res = Path(d) / "m.pt"
        cmd = [sys.executable, __file__, "--worker", impl, "--feats", str(feats_path), "--result", str(res),
               "--batch", str(args.batch), "--device", args.device, "--threads", str(args.threads), "--dtype", dtype]
        if args.peer_path: cmd += ["--peer-path", args.peer_path]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            if impl.startswith("ours"): raise SystemExit(f"ours failed:\n{p.stderr[-3000:]}")
            lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
            return {"error": lines[-1] if lines else f"exit status {p.returncode}"}, None
        return json.loads(p.stdout.strip().splitlines()[-1]), torch.load(res, weights_only=True)


def peer_version(peer, path) -> str | None:
    "The installed version of `peer` under `path` (or on sys.path), None if it cannot be imported."
    code = (f"import sys; sys.path.insert(0, {path!r}) if {bool(path)} else None; import importlib.metadata as md; "
            f"import {PEER_MODULES[peer]}; print(md.version({PEER_DISTS[peer]!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def bench(name, feats, args, peers, out_dir) -> dict:
    path = out_dir / f"{name}.pt"
    torch.save(feats, path)
    L, n, d = feats.shape
    print(f"\n== {name}: {L} layers × {n} examples × {d} float32, minibatches of {args.batch} "
          f"({-(-n // args.batch)} batches), device {args.device}", flush=True)
    impls = ["ours", "ours float32 Grams", *peers]
    runs = {i: [] for i in impls}
    for r in range(args.repeats):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            runs[impl].append(spawn(impl, path, args))
    if "torch_cka" in peers and args.peer_float64:
        runs["torch_cka float64"] = [spawn("torch_cka", path, args, dtype="float64")]
    ours = runs["ours"][-1][1]
    threads = runs["ours"][-1][0]["threads"]
    rows = {}
    for impl, done in runs.items():
        ok = [(st, m) for st, m in done if m is not None]
        if not ok:
            rows[impl] = {"error": done[-1][0]["error"]}
            continue
        t = [st["seconds"] for st, _ in ok]
        rows[impl] = {"best_s": min(t), "median_s": statistics.median(t), "peak_mb": max(st["peak_mb"] for st, _ in ok),
                      "max_abs_dcka": float((ok[-1][1] - ours).abs().nan_to_num(float("inf")).max())}
    for r in rows.values():
        if "best_s" in r:
            r["ours_faster_by"] = r["best_s"] / rows["ours"]["best_s"]
            r["ours_f32_grams_faster_by"] = r["best_s"] / rows["ours float32 Grams"]["best_s"]
    print(f"threads: {threads}; repeats: {args.repeats} (fresh process each; float64 peer run once)")
    print(f"{'implementation':<20}{'best s':>9}{'median s':>10}{'peak MB':>9}{'max|ΔCKA| vs ours':>19}"
          f"{'ours faster by':>16}{'ours f32-Gram faster by':>25}")
    for impl, r in rows.items():
        if "error" in r:
            print(f"{impl:<20}  failed: {r['error']}")
            continue
        ratios = ("", "") if impl.startswith("ours") else \
            (f"{r['ours_faster_by']:.1f}×", f"{r['ours_f32_grams_faster_by']:.1f}×")
        print(f"{impl:<20}{r['best_s']:>9.3f}{r['median_s']:>10.3f}{r['peak_mb']:>9.1f}{r['max_abs_dcka']:>19.2e}"
              f"{ratios[0]:>16}{ratios[1]:>25}")
    off = ours.diagonal().sub(1).abs().max()
    print(f"ours: CKA(layer, layer) - 1 at most {off:.1e}; CKA range [{ours.min():.3f}, {ours.max():.3f}]", flush=True)
    return {"features": name, "layers": L, "n": n, "width": d, "batch": args.batch, "device": args.device,
            "threads": threads, "rows": rows}


def cached_vit_features(args) -> dict[str, torch.Tensor]:
    "ViT features from --cache when there, else extracted (and saved there when --cache is given)."
    file = args.cache / f"vit_base_patch16_224_random_n{args.vit_n}_b{args.batch}_seed0.pt" if args.cache else None
    if file is not None and file.is_file():
        print(f"\nViT-B/16 block outputs of {args.vit_n} random images: loaded from {file}", flush=True)
        return torch.load(file, weights_only=True)
    print(f"\nextracting ViT-B/16 block outputs of {args.vit_n} random images (random weights, 224 px)", flush=True)
    t0 = time.perf_counter()
    vit = vit_features(args.vit_n, args.batch)
    print(f"  extraction took {time.perf_counter() - t0:.0f} s (not part of any timing)")
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(vit, file)
    return vit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="examples of the synthetic feature set (ViT-B/16 shapes)")
    ap.add_argument("--batch", type=int, default=250, help="minibatch size of the CKA (all implementations)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--vit-n", type=int, default=500, help="random images through the real ViT-B/16 (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in every run, all implementations alike (0: torch's default). Default 1: on a "
                         "shared 2-core machine, OpenMP waits make 2-thread timings noise")
    ap.add_argument("--peer", default="all", choices=[*PEERS, "all"])
    ap.add_argument("--peer-path", default=os.environ.get("WORKBENCH_CKA_PEER_PATH"),
                    help="folder the peers are installed in (pip install --target); default $WORKBENCH_CKA_PEER_PATH")
    ap.add_argument("--no-peer-float64", dest="peer_float64", action="store_false",
                    help="skip the float64 run of torch_cka (accuracy reference)")
    ap.add_argument("--cache", type=Path, help="keep the extracted ViT features in this folder and reuse them")
    ap.add_argument("--skip-synthetic", action="store_true", help="only the real ViT feature sets")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", choices=list(RUNNERS), help=argparse.SUPPRESS)
    ap.add_argument("--feats", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker: return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available(): raise SystemExit("--device cuda: CUDA is not available here")

    peers = PEERS if args.peer == "all" else (args.peer,)
    versions = {p: peer_version(p, args.peer_path) for p in peers}
    missing = [p for p, v in versions.items() if v is None]
    if missing:
        print(f"peer implementation(s) missing: {', '.join(missing)} (looked in --peer-path={args.peer_path!r} and sys.path).\n"
              f"Install outside the project, e.g.: pip install --no-deps --target /tmp/peer "
              f"{' '.join(PEER_DISTS[p] + ('==0.21' if p == 'torch_cka' else '==1.1.3') for p in missing)}\n"
              f"then pass --peer-path /tmp/peer", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}; peers: {', '.join(f'{p} {v}' for p, v in versions.items())}")
    results = []
    with tempfile.TemporaryDirectory() as d:
        out_dir = Path(d)
        if not args.skip_synthetic:
            results.append(bench("synthetic", synthetic_features(args.n), args, peers, out_dir))
        if args.vit_n:
            for name, f in cached_vit_features(args).items(): results.append(bench(name, f, args, peers, out_dir))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "peers": versions, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
