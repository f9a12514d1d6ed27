"""Benchmark: text-query Score-CAM with `workbench.methods.score_cam` against pytorch-grad-cam's `ScoreCAM` given a
cosine-similarity target, on the same CLIP, layer, images and text embedding, in one process, interleaved.

Rows per model:
- `grad-cam`: `pytorch_grad_cam.ScoreCAM` (its default batch of 16 masked copies, every copy materialised at once,
  one `.item()` per sample), the image tower wrapped so that its output is the image embedding;
- `ours (gradcam)`: `score_cam(..., weighting="gradcam")`, pytorch-grad-cam's weighting exactly; Pearson r per image
  against grad-cam's maps at the input size is the agreement check (goal >= 0.999);
- `limit`: C masked forwards per image through the image encoder at the best of --batch-sizes, nothing else (the cost
  the method cannot avoid when every channel is scored);
- `ours top-k`: gScoreCAM's top-k channels (default k = 300, or C / 8 when C < 2400), with r against full Score-CAM
  with the same weighting.

Models: `tiny-rn` (an open_clip CLIP with a small ModifiedResNet tower at 128 px, random weights, layer4 = 512 × 4 × 4),
`aerial` (the committed `checkpoints/aerial_clip.safetensors`, ViT tower, last block's tokens on the 8 × 8 grid),
`object-rn` / `object-vit` (the committed object-world CLIPs of nb 62: ModifiedResNet at 128 px, layer4 = 512 × 4 × 4;
ViT at 64 px, last block's tokens on the 8 × 8 grid) and
`rn50` (open_clip RN50 at 224 px with random weights, layer4 = 2048 × 7 × 7; slow on a CPU, few images).

Goals (issue 13): at equal maps >= 2x faster than grad-cam on CPU and within 1.3x of the limit; top-k >= 5x faster at
r >= 0.95; on a GPU >= 5x at equal maps.

Usage: python benchmarks/bench_scorecam.py [--models tiny-rn,aerial,object-rn,object-vit,rn50] [--n 4] [--rn50-n 1] [--threads 2] [--device cpu] [--out bench_scorecam.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core import seeded, write_json
from workbench.methods.score_cam import as_scorer, channel_maps, clip_tower, default_layer, query_embedding, score_cam

ROOT = Path(__file__).resolve().parent.parent


def build(name: str, device):
    "(model, layer, images) for a benchmark model."
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg
    if name == "tiny-rn":
        with seeded(0):
            m = CLIP(64, CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, head_width=16, image_size=128),
                     CLIPTextCfg(context_length=16, vocab_size=49408, width=64, heads=2, layers=1))
        set_model_preprocess_cfg(m, dict(size=128, mode="RGB", mean=(0.48145466, 0.4578275, 0.40821073),
                                         std=(0.26862954, 0.26130258, 0.27577711), interpolation="bicubic",
                                         resize_mode="shortest", fill_color=0))
        return m.eval().to(device), "visual.layer4", 128
    if name == "aerial":
        from workbench.models.registry import load_model
        lm = load_model(ROOT / "checkpoints" / "aerial_clip.safetensors", device=device)
        return lm, default_layer(lm.model), 64
    if name in ("object-rn", "object-vit"):
        from workbench.models.clip import object_clip_checkpoint
        from workbench.models.registry import load_model
        lm = load_model(object_clip_checkpoint("resnet" if name == "object-rn" else "vit"), device=device)
        return lm, default_layer(lm.model), 128 if name == "object-rn" else 64
    if name == "rn50":
        with seeded(0):
            m = open_clip.create_model("RN50", pretrained=None)
        return m.eval().to(device), "visual.layer4", 224
    raise SystemExit(f"--models: unknown model {name!r}; valid: tiny-rn, aerial, object-rn, object-vit, rn50")


class ImageEmbedding(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x): return self.clip.encode_image(x)


class CosineTarget:
    def __init__(self, text): self.text = text

    def __call__(self, output): return F.cosine_similarity(output, self.text, dim=0)


def gradcam_maps(clip, x, text, layer):
    from pytorch_grad_cam import ScoreCAM
    wrapped = ImageEmbedding(clip)
    module = dict(wrapped.named_modules())["clip." + layer]
    reshape = None
    if clip_tower(clip) == "vit":
        h, w = clip.visual.grid_size
        reshape = lambda t: t[:, t.shape[1] - h * w:].transpose(1, 2).reshape(t.shape[0], -1, h, w)
    with ScoreCAM(model=wrapped, target_layers=[module], reshape_transform=reshape) as cam:
        out = cam(input_tensor=x, targets=[CosineTarget(t) for t in text])
    return torch.from_numpy(out)


def pearson(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)).tolist()


def timed(fn):
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def limit_seconds(clip, x, C: int, batch_sizes) -> tuple[float, int]:
    "Seconds for C masked forwards per image of `x` at the best batch size, and that batch size."
    best = (float("inf"), 0)
    total = C * len(x)
    with torch.inference_mode():
        for bs in batch_sizes:
            batch = x[:1].expand(bs, -1, -1, -1).contiguous()
            clip.encode_image(batch)                                   # warm-up
            _, s = timed(lambda: [clip.encode_image(batch[:min(bs, total - i)]) for i in range(0, total, bs)])
            best = min(best, (s, bs))
    return best


def bench_model(name, args, device):
    model, layer, size = build(name, device)
    sc = as_scorer(model)
    clip = sc.model
    n = args.rn50_n if name == "rn50" else args.n
    imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    query = {"aerial": "airplanes", "object-rn": "tree", "object-vit": "tree"}.get(name, "a dog")
    x = sc.preprocess(imgs)
    text = query_embedding(sc, [query])[0].expand(n, -1)
    with torch.inference_mode(): C = channel_maps(clip, x, "activations", layer).shape[1]
    score_cam(sc, imgs[:1], query, layer=layer, source="activations", weighting="gradcam")   # warm-up
    theirs, t_theirs = timed(lambda: gradcam_maps(clip, x, text, layer))
    ours, t_ours = timed(lambda: score_cam(sc, imgs, query, layer=layer, source="activations", weighting="gradcam",
                                           batch_size=args.batch))
    r = pearson(ours.upsampled(theirs.shape[-2:]), theirs)
    t_limit, best_bs = limit_seconds(clip, x, C, [int(b) for b in args.batch_sizes.split(",")])
    k = args.top_k or (300 if C >= 2400 else max(1, C // 8))
    full, t_full = timed(lambda: score_cam(sc, imgs, query, layer=layer, source="activations", batch_size=args.batch))
    topk, t_topk = timed(lambda: score_cam(sc, imgs, query, layer=layer, source="activations", top_k=k, batch_size=args.batch))
    r_topk = pearson(topk.maps, full.maps)
    row = dict(model=name, layer=layer, channels=C, input=size, images=n, query=query,
               constant_channels_skipped=C * n - ours.meta["n_forwards"],
               gradcam_s_per_image=t_theirs / n, ours_s_per_image=t_ours / n, limit_s_per_image=t_limit / n,
               limit_batch=best_bs, speedup_vs_gradcam=t_theirs / t_ours, ratio_to_limit=t_ours / t_limit,
               r_min=min(r), r_mean=float(np.mean(r)), top_k=k, full_softmax_s_per_image=t_full / n,
               topk_s_per_image=t_topk / n, topk_speedup_vs_gradcam=t_theirs / t_topk,
               topk_speedup_vs_full=t_full / t_topk, topk_r_min=min(r_topk), topk_r_mean=float(np.mean(r_topk)))
    print(f"{name}: C={C}, {n} images | grad-cam {row['gradcam_s_per_image']:.2f} s/img | ours {row['ours_s_per_image']:.2f} "
          f"(x{row['speedup_vs_gradcam']:.1f}, r min {row['r_min']:.5f}) | limit {row['limit_s_per_image']:.2f} "
          f"(bs {best_bs}; ours / limit {row['ratio_to_limit']:.2f}) | top-{k} {row['topk_s_per_image']:.3f} s/img "
          f"(x{row['topk_speedup_vs_gradcam']:.1f} vs grad-cam, r min {row['topk_r_min']:.3f} vs full)", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-rn,aerial,object-rn,object-vit,rn50")
    ap.add_argument("--n", type=int, default=4, help="images per small model")
    ap.add_argument("--rn50-n", type=int, default=1, help="images for RN50 (about a minute each per method on 2 CPU cores)")
    ap.add_argument("--batch", type=int, default=None, help="our masked images per encoder call (default: score_cam's)")
    ap.add_argument("--batch-sizes", default="16,32,64,128", help="batch sizes tried for the limit")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench_model(m, args, device) for m in args.models.split(",")]
    env = dict(torch=torch.__version__, device=args.device, threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
               gpu=torch.cuda.get_device_name() if args.device == "cuda" else None)
    if args.out: write_json(args.out, dict(env=env, rows=rows))
    return rows


if __name__ == "__main__":
    main()
