"""Gradient norm of each SparseDet loss term on the detector's parameter groups at the start of mining (reduced scale).

    python benchmarks/sparsedet_gradients.py                 # ssl_target both and original, consistency weight 1
    python benchmarks/sparsedet_gradients.py --ssl-weight 0.01

A MobileNetV3-small FPN trains 100 AdamW steps (SparseDet, mining not yet on) on 1,000 aerial images of 64 px with
Split-1 50 %; then, on 8 batches of 4 with mining on (τ_ppm 0.4), each loss term's gradient norm is taken on the
backbone, the box head, the box predictor and the RPN. `det_total` is 0.5·(L_det,o + L_det,a), what the detection
losses of both branches send together. Prints one JSON line per target: term → group → mean norm (and the mean value).
"""
import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import json

import numpy as np
import torch

from workbench.core import torch_generator
from workbench.methods.sparsedet import SparseDetConfig, augment_view, build_detector, train_detector
from workbench.data.splits import SparseDetectionDataset
from workbench.data.worlds import AerialWorld


def grad_norm(value: torch.Tensor, params) -> float:
    grads = [g for g in torch.autograd.grad(value, params, retain_graph=True, allow_unused=True) if g is not None]
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads))) if grads else 0.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ssl-weight", type=float, default=1.0)
    ap.add_argument("--batches", type=int, default=8)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    train = [AerialWorld(64, seed=0, gsd=0.8).render(i) for i in range(1000)]
    sparse = SparseDetectionDataset.from_split(train, "split1", 0.5, seed=0)
    for target in ("both", "original"):
        cfg = SparseDetConfig(tau_ppm=0.4, tau_obj=0.25, log_min_objectness=0.25, ssl_target=target, ssl_weight=a.ssl_weight)
        r = train_detector(build_detector(3, "mobilenet_v3_small_fpn", min_size=64, max_size=64, seed=0), sparse, cfg,
                           mode="sparsedet", steps=100, batch_size=4, lr=1e-3, optimizer="adamw", warmup_ppm=100, seed=0,
                           progress=False, num_threads=1, log_every=0)
        m = r.model.train()
        groups = {"backbone": [p for n, p in m.named_parameters() if n.startswith("backbone") and p.requires_grad],
                  "box_head": list(m.roi_heads.box_head.parameters()),
                  "predictor": list(m.roi_heads.box_predictor.parameters()), "rpn": list(m.rpn.parameters())}
        g, acc = torch_generator(5), {}
        for b in range(a.batches):
            batch = [sparse[i] for i in range(b * 4, b * 4 + 4)]
            ok = [(s.boxes[:, 2] > s.boxes[:, 0]) & (s.boxes[:, 3] > s.boxes[:, 1]) for s in batch]
            images = [s.image.float() / 255 for s in batch]
            targets = [dict(boxes=s.boxes[k], labels=s.labels[k] + 1) for s, k in zip(batch, ok)]
            views = [augment_view(im, t["boxes"], g, cfg)[0] for im, t in zip(images, targets)]
            losses, _ = m.sparsedet_losses(images, targets, views, cfg, mining=True)
            losses["det_total"] = 0.5 * (losses["loss_classifier"] + losses["loss_box_reg"]
                                         + losses["loss_classifier_aug"] + losses["loss_box_reg_aug"])
            for k, v in losses.items():
                if not v.requires_grad: continue
                for name, ps in groups.items(): acc.setdefault(k, {}).setdefault(name, []).append(grad_norm(v, ps))
                acc[k].setdefault("value", []).append(float(v.detach()))
        print(target, json.dumps({k: {n: round(float(np.mean(x)), 4) for n, x in d.items()} for k, d in acc.items()}), flush=True)


if __name__ == "__main__":
    main()
