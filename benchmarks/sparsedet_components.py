"""SparseDet's components at reduced scale on the aerial or the detection world: which part costs or gains AP, run by run.

    python benchmarks/sparsedet_components.py --runs baseline:baseline: no_ppm:sparsedet:'{"use_ppm":false,"use_ssl":false}'
    python benchmarks/sparsedet_components.py --p 0.7 --input-size 128 --seed 1 --runs baseline:baseline: sd:sparsedet:'{"ssl_weight":0.01}'
    python benchmarks/sparsedet_components.py --world detection --runs oracle:oracle: baseline:baseline: sd:sparsedet:

`--world aerial` (default: the setting of `52_sparse_aerial`) or `--world detection` (`53_sparse_detection`'s: 128 px
detection-world scenes, the object-world ResNet-18 backbone pretrained by `52a_train_object_backbone`, AdamW lr 1e-4,
the thesis' thresholds unless --tau-ppm / --tau-obj say otherwise); `--backbone` and `--pretrained` override the
world's detector.

Each `--runs` entry is NAME:MODE:CONFIG, MODE one of baseline | sparsedet | oracle, CONFIG a JSON object of
`SparseDetConfig` fields (empty: the defaults, with the CPU thresholds --tau-ppm / --tau-obj). Training: `--n` aerial
images (64 px, gsd 0.8, world seed 0) with Split-1 at `--p` (split seed 0; the oracle sees every annotation), a
MobileNetV3-small FPN resized to `--input-size`, `--steps` AdamW steps of 4 images, one CPU thread; mining starts
after `--warm` of the steps. With `--plain-warmup K` every run first trains K steps as the baseline, then the rest
in its mode (the second phase restarts the learning-rate schedule without a warm-up). Prints one JSON line per run:
validation COCO AP / AP50 in % on `--nval` images of world seed 1, per-class AP, seconds, the mean box-head feature
norm on the validation boxes and, for SparseDet, mean loss terms and mining quality. Deterministic for one seed.
"""
import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import json
import sys
import time
from dataclasses import fields

import numpy as np
import torch

from workbench.core import InputError
from workbench.methods.sparsedet import (SparseDetConfig, build_detector, evaluate_detector, evaluate_mining,
                                         train_detector)
from workbench.data.splits import SparseDetectionDataset
from workbench.data.worlds import AerialWorld, DetectionWorld

MODES = ("baseline", "sparsedet", "oracle")


def parse_run(spec: str) -> tuple[str, str, dict]:
    parts = spec.split(":", 2)
    if len(parts) != 3 or parts[1] not in MODES:
        sys.exit(f"--runs {spec!r}: valid: NAME:MODE:CONFIG with MODE in {'|'.join(MODES)} and CONFIG a JSON object or empty")
    try: extra = json.loads(parts[2] or "{}")
    except json.JSONDecodeError as e: sys.exit(f"--runs {spec!r}: CONFIG is not JSON ({e})")
    if not isinstance(extra, dict): sys.exit(f"--runs {spec!r}: CONFIG must be a JSON object")
    return parts[0], parts[1], extra


def make_config(a, extra: dict) -> SparseDetConfig:
    unknown = set(extra) - {f.name for f in fields(SparseDetConfig)}
    if unknown: raise SystemExit(f"--runs CONFIG: unknown SparseDetConfig field(s) {sorted(unknown)}; valid: {[f.name for f in fields(SparseDetConfig)]}")
    return SparseDetConfig(**{**dict(tau_ppm=a.tau_ppm, tau_obj=a.tau_obj, log_min_objectness=min(a.tau_ppm, a.tau_obj, 0.5)), **extra})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="NAME:MODE:CONFIG_JSON ...")
    ap.add_argument("--p", type=float, default=0.5, help="Split-1 removal rate")
    ap.add_argument("--n", type=int, default=1000, help="training images")
    ap.add_argument("--nval", type=int, default=200, help="validation images")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warm", type=float, default=0.25, help="share of the (SparseDet phase's) steps before mining")
    ap.add_argument("--plain-warmup", type=int, default=0, help="baseline steps before every run's own mode")
    ap.add_argument("--input-size", type=int, default=64, help="the detector's min_size = max_size (images are 64 px)")
    ap.add_argument("--tau-ppm", type=float, default=None, help="default: 0.4 (aerial, as 52_sparse_aerial), 0.8 (detection, the thesis)")
    ap.add_argument("--tau-obj", type=float, default=None, help="default: 0.25 (aerial), 0.5 (detection)")
    ap.add_argument("--seed", type=int, default=0, help="detector initialisation and training order")
    ap.add_argument("--world", choices=("aerial", "detection"), default="aerial")
    ap.add_argument("--backbone", default=None, help="default: mobilenet_v3_small_fpn (aerial), object_resnet18_fpn (detection)")
    ap.add_argument("--pretrained", choices=("auto", "yes", "no"), default="auto", help="auto: pretrained on the detection world only")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 (aerial, from scratch), 1e-4 (detection, pretrained)")
    a = ap.parse_args(argv)
    det = a.world == "detection"
    a.tau_ppm = a.tau_ppm if a.tau_ppm is not None else 0.8 if det else 0.4
    a.tau_obj = a.tau_obj if a.tau_obj is not None else 0.5 if det else 0.25
    a.backbone = a.backbone or ("object_resnet18_fpn" if det else "mobilenet_v3_small_fpn")
    pretrained = det if a.pretrained == "auto" else a.pretrained == "yes"
    lr = a.lr or (1e-4 if pretrained else 1e-3)
    if det and a.input_size == 64: a.input_size = 128
    try:
        runs = [parse_run(s) for s in a.runs]
        if not 0 < a.p < 1: raise SystemExit(f"--p {a.p}; valid: a removal rate in (0, 1)")
        if not 0 <= a.plain_warmup < a.steps: raise SystemExit(f"--plain-warmup {a.plain_warmup}; valid: 0 <= K < --steps ({a.steps})")
        cfgs = [make_config(a, extra) for _, _, extra in runs]
    except (SystemExit, InputError) as e:
        print(e, file=sys.stderr); sys.exit(2)
    torch.set_num_threads(1)
    if det:   # the world seeds of 53_sparse_detection: training `--seed`, validation 100
        train = [DetectionWorld(size=128, seed=a.seed).render(i) for i in range(a.n)]
        val = [DetectionWorld(size=128, seed=100).render(i) for i in range(a.nval)]
    else:
        train = [AerialWorld(64, seed=0, gsd=0.8).render(i) for i in range(a.n)]
        val = [AerialWorld(64, seed=1, gsd=0.8).render(i) for i in range(a.nval)]
    n_classes = len(train[0].meta["class_names"])
    sparse = SparseDetectionDataset.from_split(train, "split1", a.p, seed=0)
    full = SparseDetectionDataset(train)
    kw = dict(batch_size=4, lr=lr, optimizer="adamw", progress=False, num_threads=1, log_every=0)
    for (name, mode, _), cfg in zip(runs, cfgs):
        t = time.time()
        data = full if mode == "oracle" else sparse
        model = build_detector(n_classes, a.backbone, min_size=a.input_size, max_size=a.input_size, seed=a.seed, pretrained_backbone=pretrained)
        steps, extra_kw = a.steps, {}
        if a.plain_warmup:
            train_detector(model, data, cfg, mode="baseline", steps=a.plain_warmup, seed=a.seed, **kw)
            steps, extra_kw = a.steps - a.plain_warmup, dict(lr_warmup=0)
        r = train_detector(model, data, cfg, mode="sparsedet" if mode == "sparsedet" else "baseline", steps=steps,
                           warmup_ppm=int(a.warm * steps), seed=a.seed + (7 if a.plain_warmup else 0), **extra_kw, **kw)
        ev = evaluate_detector(r.model, val, num_threads=1)
        m = r.model
        with torch.no_grad():   # box-head feature norm on the validation boxes of clean images
            ims = [s.image.float() / 255 for s in val[:50]]
            il, _ = m.transform(ims)
            bf = m._box_features(m.backbone(il.tensors), [s.boxes for s in val[:50]], il.image_sizes)
        row = dict(name=name, mode=mode, world=a.world, backbone=a.backbone, pretrained=pretrained, p=a.p, seed=a.seed,
                   input_size=a.input_size, plain_warmup=a.plain_warmup,
                   AP=round(100 * ev["AP"], 2), AP50=round(100 * ev["AP50"], 2),
                   per_class={v["name"]: round(100 * v["AP"], 2) for v in ev["per_class"].values()}, sec=round(time.time() - t),
                   feat_norm=round(float(bf.norm(dim=1).mean()), 3))
        h = [x for x in r.history if x.get("mining")]
        if h:
            for k in ("loss_ssl", "loss_classifier", "loss_classifier_aug", "loss_objectness", "n_pseudo_positives", "n_merged"):
                if k in h[0]: row["mean_" + k] = round(float(np.mean([x[k] for x in h])), 4)
            q = evaluate_mining(r.parts["mining_log"], sparse)
            row.update(recovery=round(q["recovery"], 4), precision=q["precision"] and round(q["precision"], 4), n_mined=q["n_mined"])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
