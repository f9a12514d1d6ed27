"""Tests of workbench.methods.sparsedet: the SparseDet rules on hand-made boxes (PPM thresholds, protected negatives, merged
ground truth), the augmented view, the detector parts, a few training steps in each mode (loss terms, determinism,
mining log) and evaluation. Tiny images (64 px), a MobileNetV3-small FPN, a few steps: the whole file runs in about a minute on
two CPU cores."""
import json
import math

import pytest
import torch
from torchvision.ops import box_iou

from workbench.core import InputError, torch_generator
from workbench.eval.boxes import mining_quality
from workbench.methods.sparsedet import (ABLATIONS, CommonRPNHead, MiningLog, SparseDetConfig, ablation_config,
                                         augment_view, box_erase, build_detector, combine_losses, evaluate_detector,
                                         evaluate_mining, gap_closed, merge_ground_truth, photometric_cascade,
                                         protected_from_negatives, pseudo_positive_mining, rpn_proposals, rpn_recall,
                                         train_detector)
from workbench.data.splits import SparseDetectionDataset, samples_to_coco
from workbench.data.fixtures import rectangle_samples

SMALL = dict(backbone="mobilenet_v3_small_fpn", min_size=64, max_size=64, seed=0)
LOW = dict(tau_ppm=0.3, tau_obj=0.2, log_min_objectness=0.2)   # an untrained RPN already mines at these thresholds


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    train = rectangle_samples(12, seed=0)
    return train, SparseDetectionDataset.from_split(train, "split1", 0.5, seed=0)


# --- pseudo-positive mining -------------------------------------------------------------------------------------

def test_ppm_thresholds_are_strict():
    gt = torch.tensor([[0, 0, 10, 10.]])
    props = torch.tensor([[20, 20, 30, 30],    # no overlap, objectness exactly tau_ppm: not mined (needs >)
                          [40, 40, 50, 50],    # no overlap, above tau_ppm: mined
                          [0, 0, 10, 2.5],     # IoU exactly 0.25 = tau_bg: not mined (needs <)
                          [0, 7.5, 10, 10],    # IoU 0.25 again, other side
                          [0, 0, 10, 2],       # IoU 0.2 < 0.25: mined
                          [0, 0, 10, 10.]])    # the annotation itself
    obj = torch.tensor([0.75, 0.9375, 0.875, 0.875, 0.875, 0.99])
    m = pseudo_positive_mining(props, obj, gt, tau_ppm=0.75, tau_bg=0.25, nms_iou=0.3)
    assert m.candidates.tolist() == [False, True, False, False, True, False]
    assert m.boxes.tolist() == [[40, 40, 50, 50], [0, 0, 10, 2]]
    assert m.scores.tolist() == [0.9375, 0.875]


def test_ppm_defaults_and_nms():
    cfg = SparseDetConfig()
    assert (cfg.tau_ppm, cfg.tau_bg, cfg.tau_fg, cfg.tau_obj, cfg.tau_m) == (0.8, 0.2, 0.4, 0.5, 0.9)
    gt = torch.tensor([[0, 0, 10, 10.]])
    props = torch.tensor([[50, 50, 60, 60], [51, 50, 61, 60], [20, 20, 30, 30], [70, 0, 80, 10], [0, 0, 10, 10.]])
    obj = torch.tensor([0.9, 0.95, 0.8, 0.81, 0.9])
    m = pseudo_positive_mining(props, obj, gt)
    assert m.candidates.tolist() == [True, True, False, True, False]   # 0.8 is not > 0.8
    assert m.boxes.tolist() == [[51, 50, 61, 60], [70, 0, 80, 10]]     # the higher-scoring twin survives NMS
    # an image without annotations: every confident proposal is a candidate
    assert pseudo_positive_mining(props, obj, torch.zeros(0, 4)).candidates.tolist() == [True, True, False, True, True]


def test_ppm_low_threshold_log_is_consistent_with_training_set():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 80
    props = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 15], 1)
    obj = torch.rand(200, generator=g)
    gt = props[:5].clone()
    train = pseudo_positive_mining(props, obj, gt, 0.8, 0.2, 0.3)
    logged = pseudo_positive_mining(props, obj, gt, 0.8, 0.2, 0.3, min_objectness=0.3)
    assert len(logged.boxes) > len(train.boxes) > 0
    assert torch.equal(logged.above(0.8).boxes, train.boxes)
    assert torch.equal(logged.candidates, train.candidates)


def test_protected_from_negatives():
    props = torch.tensor([[50, 50, 60, 60], [52, 50, 62, 60], [52, 50, 62, 60], [0, 0, 5, 5], [55, 50, 65, 60.]])
    obj = torch.tensor([0.9, 0.6, 0.4, 0.9, 0.7])
    mined = pseudo_positive_mining(props, obj, torch.zeros(0, 4), 0.8, 0.2, 0.3)
    # 0 and 3 are pseudo-positives; 1 overlaps 0 with IoU 80/120 >= 0.4 and objectness 0.6 > 0.5; 2 is the same box with
    # objectness 0.4 (not protected); 4 overlaps 0 with IoU 50/150 < 0.4 (not protected)
    assert protected_from_negatives(props, obj, mined, tau_fg=0.4, tau_obj=0.5).tolist() == [True, True, False, True, False]


def test_roi_sampler_never_takes_protected_proposals_as_background():
    det = build_detector(2, **SMALL)
    rh = det.roi_heads
    rh.fg_bg_sampler.batch_size_per_image = 10_000   # take every labelled proposal
    gt = dict(boxes=torch.tensor([[0, 0, 20, 20.]]), labels=torch.tensor([1]))
    props = torch.tensor([[0, 0, 20, 19], [30, 30, 50, 50], [31, 30, 51, 50], [0, 40, 10, 50], [1, 0, 20, 20.]])
    protect = torch.tensor([False, True, True, False, True])   # the last one matches the annotation: stays positive
    p, _, labels, _ = rh.select_training_samples([props], [gt], [protect])
    got = {tuple(b): int(l) for b, l in zip(p[0].tolist(), labels[0].tolist())}
    assert (30, 30, 50, 50) not in got and (31, 30, 51, 50) not in got
    assert got[(0, 40, 10, 50)] == 0 and got[(1, 0, 20, 20)] == 1 and got[(0, 0, 20, 19)] == 1
    p, _, labels, _ = rh.select_training_samples([props], [gt])   # without protection they are negatives
    assert sum(1 for b, l in zip(p[0].tolist(), labels[0].tolist()) if b[0] >= 30 and l == 0) == 2


# --- merged ground truth ----------------------------------------------------------------------------------------

def test_merge_never_drops_an_annotation():
    g = torch.Generator().manual_seed(1)
    for trial in range(50):
        n, m = int(torch.randint(0, 6, (), generator=g)), int(torch.randint(0, 12, (), generator=g))
        xy = torch.rand(n, 2, generator=g) * 30
        gt_b = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 10], 1)
        if n >= 2: gt_b[1] = gt_b[0] + torch.tensor([1., 0, 1, 0])   # two same-class annotations with IoU > 0.5
        gt_l = torch.ones(n, dtype=torch.int64)
        dxy = torch.rand(m, 2, generator=g) * 30
        d_b = torch.cat([dxy, dxy + 10 + torch.rand(m, 2, generator=g) * 10], 1)
        if n and m: d_b[0] = gt_b[0]                                  # a perfect-score copy of an annotation
        d_s = torch.rand(m, generator=g) * 0.2 + 0.8
        if m: d_s[0] = 1.0
        d_l = torch.randint(1, 3, (m,), generator=g)
        b, l, added = merge_ground_truth(gt_b, gt_l, d_b, d_s, d_l, tau_m=0.9, nms_iou=0.5)
        assert torch.equal(b[:n], gt_b) and torch.equal(l[:n], gt_l)
        assert len(b) == n + added
        extra_b, extra_l = b[n:], l[n:]
        idx = [i for i in range(m) if d_s[i] > 0.9]
        assert added <= len(idx)
        for eb, el in zip(extra_b, extra_l):   # every added detection is confident and no same-class duplicate of an annotation
            assert any(torch.equal(eb, d_b[i]) and d_s[i] > 0.9 for i in idx)
            same = gt_l == el
            if same.any():
                from torchvision.ops import box_iou
                assert box_iou(eb[None], gt_b[same]).max() <= 0.5


def test_merge_thresholds():
    gt_b, gt_l = torch.tensor([[0, 0, 10, 10.]]), torch.tensor([1])
    d_b = torch.tensor([[30, 30, 40, 40], [60, 60, 70, 70], [0, 0, 10, 10], [31, 30, 41, 40.]])
    d_s = torch.tensor([0.95, 0.9, 0.99, 0.91])
    d_l = torch.tensor([1, 2, 2, 1])
    b, l, added = merge_ground_truth(gt_b, gt_l, d_b, d_s, d_l)
    # 0.9 is not > 0.9; the label-2 copy of the annotation is another class (class-wise NMS keeps it); the twin of box 0 goes
    assert b.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]] and l.tolist() == [1, 2, 1] and added == 2


# --- the augmented view -----------------------------------------------------------------------------------------

def test_box_erase_area_and_placement():
    img = torch.rand(3, 80, 80, generator=torch.Generator().manual_seed(0)) + 0.1
    g = torch_generator(0)
    for k in range(60):
        w, h = 3 + (k * 7) % 40, 3 + (k * 11) % 40
        box = torch.tensor([[5., 7., 5 + w, 7 + h]])
        out, rects = box_erase(img, box, g, area=(0.4, 0.7), aspect=(0.3, 3.3))
        assert len(rects) == 1
        x0, y0, x1, y1 = rects[0].int().tolist()
        assert 5 <= x0 < x1 <= 5 + w and 7 <= y0 < y1 <= 7 + h
        assert 0.4 <= (x1 - x0) * (y1 - y0) / (w * h) <= 0.7
        erased = torch.zeros(80, 80, dtype=torch.bool); erased[y0:y1, x0:x1] = True
        assert (out[:, erased] == 0).all() and torch.equal(out[:, ~erased], img[:, ~erased])
    out, rects = box_erase(img, torch.tensor([[10., 10., 11., 11.]]), g)   # one pixel: nothing fits in [0.4, 0.7]
    assert len(rects) == 0 and torch.equal(out, img)
    out, rects = box_erase(img, torch.zeros(0, 4), g)
    assert len(rects) == 0 and torch.equal(out, img)


def test_photometric_cascade_ranges_and_identity():
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    same, _ = photometric_cascade(img, torch_generator(0), (1, 1), (1, 1), (1, 1), 0.0)
    assert torch.allclose(same, img, atol=1e-6)
    for s in range(20):
        out, p = photometric_cascade(img, torch_generator(s))
        assert all(0.5 <= p[k] <= 1.5 for k in ("contrast", "brightness", "saturation"))
        assert out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    dark, _ = photometric_cascade(img, torch_generator(0), (1, 1), (0.5, 0.5), (1, 1), 0.0)
    assert torch.allclose(dark, img * 0.5, atol=1e-6)


def test_augment_view_keeps_boxes_and_is_seeded(data):
    train, _ = data
    s = train[3]
    img = s.image.float() / 255
    boxes = s.boxes.clone()
    v1, r1 = augment_view(img, s.boxes, torch_generator(5))
    v2, r2 = augment_view(img, s.boxes, torch_generator(5))
    assert torch.equal(v1, v2) and torch.equal(r1, r2) and torch.equal(s.boxes, boxes)
    assert v1.shape == img.shape   # geometry unchanged: the same boxes hold in both views
    assert not torch.equal(augment_view(img, s.boxes, torch_generator(6))[0], v1)


# --- detector parts ---------------------------------------------------------------------------------------------

def test_build_detector_backbones_and_anchors():
    for bb in ("resnet18_fpn", "mobilenet_v3_small_fpn", "object_resnet18_fpn"):
        det = build_detector(3, bb, min_size=128, max_size=128).eval()
        with torch.no_grad(): out = det([torch.rand(3, 128, 128)])
        assert set(out[0]) == {"boxes", "scores", "labels"}
        assert det.roi_heads.box_predictor.cls_score.out_features == 4
        levels = [8, 16, 32, 64] if bb == "object_resnet18_fpn" else [8, 16, 32, 64, 128]
        assert [s[0] for s in det.rpn.anchor_generator.sizes] == levels
    with pytest.raises(InputError, match="valid: mobilenet_v3_small_fpn, resnet18_fpn"):
        build_detector(3, "resnet34_fpn")
    with pytest.raises(InputError, match="resnet backbones only"):
        build_detector(3, "mobilenet_v3_small_fpn", min_size=64, pretrained_backbone=True)


def test_object_backbone_loads_the_workbench_trunk_with_frozen_statistics(tmp_path):
    from torchvision.ops.misc import FrozenBatchNorm2d
    from workbench.models.backbones import ObjectResNet
    from workbench.models.registry import save_checkpoint
    torch.manual_seed(3)
    trunk = ObjectResNet(num_classes=8)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d): m.running_mean.uniform_(-1, 1)
    path = save_checkpoint(trunk, tmp_path / "t.safetensors", "wb:object-resnet18", fp16=True, num_classes=8, depth=3)
    det = build_detector(3, "object_resnet18_fpn", min_size=64, max_size=64, pretrained_backbone=str(path))
    body = det.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, trunk.layer2[0].conv1.weight.half().float())
    assert isinstance(body.bn1, FrozenBatchNorm2d) and torch.equal(body.bn1.running_mean, trunk.bn1.running_mean.half().float())
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad and body.layer3[0].conv1.weight.requires_grad
    scratch = build_detector(3, "object_resnet18_fpn", min_size=64, max_size=64).backbone.body
    assert isinstance(scratch.bn1, torch.nn.BatchNorm2d) and scratch.conv1.weight.requires_grad
    save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", "wb:gan-encoder")
    with pytest.raises(InputError, match="wb:object-resnet18"):
        build_detector(3, "object_resnet18_fpn", min_size=64, pretrained_backbone=str(tmp_path / "x.safetensors"))


def test_pretrained_backbone_comes_only_from_the_weights_folder(isolated_settings):
    from workbench.models.registry import WeightsMissingError
    with pytest.raises(WeightsMissingError, match="resnet18.tv_in1k"):
        build_detector(3, "resnet18_fpn", min_size=64, pretrained_backbone=True)


def test_common_rpn_head_starts_as_the_plain_head():
    det = build_detector(2, **SMALL).eval()
    feats = [torch.randn(1, 64, s, s) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        plain = det.rpn.head(feats)
        det.enable_common_rpn()
        assert isinstance(det.rpn.head, CommonRPNHead) and det.rpn.common
        common = det.rpn.head([torch.cat([f, torch.zeros_like(f)], 1) for f in feats])        # (sum/2, difference/2) of two equal views
        other = det.rpn.head([torch.cat([f / 2, f / 2], 1) for f in feats])                    # views f and 0
    for a, b in zip(plain[0] + plain[1], common[0] + common[1]):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(plain[0][0], other[0][0])
    assert det.enable_common_rpn().rpn.head is det.rpn.head   # idempotent


IDENTICAL_VIEW = dict(use_ppm=False, use_ssl=False, use_merge=False, contrast=(1, 1), brightness=(1, 1), saturation=(1, 1),
                      lighting=0, erase_boxes=0)


@pytest.mark.parametrize("aug_branch", [False, True])
def test_identical_view_trains_exactly_as_the_baseline(data, aug_branch):
    """With the view equal to the image and mining off, SparseDet's two-view machinery takes the baseline's steps: the
    common RPN (sum/difference coordinates) learns what the plain head learns, the view's transform leaves the samplers'
    random stream alone, and the augmented branch samples the original branch's RoIs, so 0.5·(L_o + L_a) = L_o.
    After a few SGD steps every weight matches the baseline's, the difference half of the common conv stays zero and its
    sum half is the plain conv. (In [f_o, f_a] coordinates the RPN conv moved at twice the rate.)"""
    _, sparse = data
    cfg = SparseDetConfig(**IDENTICAL_VIEW, use_aug_branch=aug_branch)
    kw = dict(steps=4, batch_size=2, lr=0.01, optimizer="sgd", seed=0, progress=False)
    base = train_detector(build_detector(2, **SMALL), sparse, mode="baseline", **kw).model.state_dict()
    sdet = train_detector(build_detector(2, **SMALL), sparse, cfg, mode="sparsedet", **kw).model.state_dict()
    start = build_detector(2, **SMALL).state_dict()
    w = sdet.pop("rpn.head.conv.0.0.weight")
    C = w.shape[1] // 2
    assert torch.count_nonzero(w[:, C:]) == 0
    moved = (base["rpn.head.conv.0.0.weight"] - start["rpn.head.conv.0.0.weight"]).abs().max()
    assert moved > 1e-4 and (w[:, :C] - base.pop("rpn.head.conv.0.0.weight")).abs().max() < 1e-3 * moved
    assert set(sdet) == set(base)
    for k, v in base.items():
        if v.is_floating_point(): assert torch.allclose(v, sdet[k], rtol=1e-4, atol=1e-6), k


def test_same_seed_same_initial_weights():
    a, b = build_detector(2, **SMALL), build_detector(2, **SMALL)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    c = build_detector(2, **{**SMALL, "seed": 1})
    assert not torch.equal(a.state_dict()["rpn.head.cls_logits.weight"], c.state_dict()["rpn.head.cls_logits.weight"])


# --- loss terms -------------------------------------------------------------------------------------------------

def _one_pass(data, cfg):
    train, sparse = data
    det = build_detector(2, **SMALL)
    if cfg.use_common_rpn: det.enable_common_rpn()
    det.train()
    batch = [sparse[i] for i in range(3)]
    images = [s.image.float() / 255 for s in batch]
    targets = [dict(boxes=s.boxes, labels=s.labels + 1) for s in batch]
    views = [augment_view(im, s.boxes, torch_generator(0), cfg)[0] for im, s in zip(images, batch)] if cfg.needs_view else None
    return det.sparsedet_losses(images, targets, views, cfg, mining=True)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_loss_terms_follow_the_switches(data, name):
    cfg = ablation_config(name, **LOW)
    losses, info = _one_pass(data, cfg)
    want = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    if cfg.use_aug_branch: want |= {"loss_classifier_aug", "loss_box_reg_aug"}
    if cfg.use_ssl: want |= {"loss_ssl"}
    assert set(losses) == want
    assert all(torch.isfinite(v) for v in losses.values())
    total = combine_losses(losses)
    det = losses["loss_classifier"] + losses["loss_box_reg"]
    if cfg.use_aug_branch: det = 0.5 * (det + losses["loss_classifier_aug"] + losses["loss_box_reg_aug"])
    expect = det + losses["loss_objectness"] + losses["loss_rpn_box_reg"] + losses.get("loss_ssl", 0)
    assert torch.allclose(total, expect)
    if cfg.use_ppm:
        assert sum(len(m[0]) for m in info["mined"]) > 0
        if cfg.use_ssl: assert losses["loss_ssl"] > 0
    else:
        assert all(m is None for m in info["mined"])


def test_merged_detections_reach_the_augmented_branch(data):
    losses, info = _one_pass(data, SparseDetConfig(**LOW, tau_m=0.0))
    assert info["n_merged"] > 0 and torch.isfinite(losses["loss_classifier_aug"])
    losses, info = _one_pass(data, SparseDetConfig(**LOW, use_merge=False, tau_m=0.0))
    assert info["n_merged"] == 0
    assert losses["loss_ssl"].requires_grad   # the consistency loss trains the network


def test_unannotated_batch_with_every_proposal_protected_gives_finite_losses(data):
    "Split-1 leaves images without annotations; early on every proposal can be a pseudo-positive: no sample, no nan."
    _, sparse = data
    cfg = SparseDetConfig(tau_ppm=0.0, tau_obj=0.0, log_min_objectness=0.0)
    det = build_detector(2, **SMALL).enable_common_rpn().train()
    batch = [sparse[i] for i in range(2)]
    images = [s.image.float() / 255 for s in batch]
    views = [augment_view(im, s.boxes, torch_generator(0), cfg)[0] for im, s in zip(images, batch)]
    empty = [dict(boxes=torch.zeros((0, 4)), labels=torch.zeros(0, dtype=torch.int64)) for _ in batch]
    losses, info = det.sparsedet_losses(images, empty, views, cfg, mining=True)
    assert all(len(m[0]) for m in info["mined"])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_classifier"] == 0 and losses["loss_classifier_aug"] == 0
    combine_losses(losses).backward()   # still a graph: the step runs


@pytest.mark.parametrize("target", ["original", "both"])
def test_consistency_target(data, target):
    "With ssl_target='original' the original view's features are a fixed target: the consistency loss sends no gradient into that view."
    _, sparse = data
    cfg = SparseDetConfig(**LOW, ssl_target=target)
    det = build_detector(2, **SMALL).enable_common_rpn().train()
    batch = [sparse[i] for i in range(3)]
    images = [(s.image.float() / 255).requires_grad_() for s in batch]
    views = [augment_view(im.detach(), s.boxes, torch_generator(0), cfg)[0].requires_grad_() for im, s in zip(images, batch)]
    losses, _ = det.sparsedet_losses(images, [dict(boxes=s.boxes, labels=s.labels + 1) for s in batch], views, cfg)
    assert losses["loss_ssl"] > 0
    g_o = torch.autograd.grad(losses["loss_ssl"], images, retain_graph=True, allow_unused=True)
    g_a = torch.autograd.grad(losses["loss_ssl"], views, allow_unused=True)
    n_o = sum(float(g.abs().sum()) for g in g_o if g is not None)
    assert sum(float(g.abs().sum()) for g in g_a if g is not None) > 0
    assert (n_o == 0) if target == "original" else (n_o > 0)


def test_augmented_view_leaves_batchnorm_running_stats_alone(data):
    "The running statistics (what clean test images are normalised with) must come from the clean images only."
    _, sparse = data
    cfg = SparseDetConfig(**LOW)
    a, b = build_detector(2, **SMALL).enable_common_rpn().train(), build_detector(2, **SMALL).train()
    batch = [sparse[i] for i in range(3)]
    images = [s.image.float() / 255 for s in batch]
    views = [augment_view(im, s.boxes, torch_generator(0), cfg)[0] for im, s in zip(images, batch)]
    a.sparsedet_losses(images, [dict(boxes=s.boxes, labels=s.labels + 1) for s in batch], views, cfg)
    with torch.no_grad(): b.backbone(b.transform(images)[0].tensors)
    stats = lambda m: {k: v for k, v in m.backbone.state_dict().items() if "running" in k or "num_batches" in k}
    sa, sb = stats(a), stats(b)
    assert sa and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_sparsedet_losses_checks_its_inputs(data):
    train, sparse = data
    det = build_detector(2, **SMALL).train()
    s = sparse[0]
    with pytest.raises(InputError, match="enable_common_rpn"):
        det.sparsedet_losses([s.image / 255.], [dict(boxes=s.boxes, labels=s.labels + 1)], [s.image / 255.], SparseDetConfig())
    with pytest.raises(InputError, match="needs the augmented views"):
        det.sparsedet_losses([s.image / 255.], [dict(boxes=s.boxes, labels=s.labels + 1)], None, SparseDetConfig(use_common_rpn=False))


def test_config_validation():
    with pytest.raises(InputError, match="use_ssl=True needs use_ppm=True"): SparseDetConfig(use_ppm=False)
    with pytest.raises(InputError, match="use_merge=True needs use_aug_branch=True"): SparseDetConfig(use_aug_branch=False)
    with pytest.raises(InputError, match="tau_ppm"): SparseDetConfig(tau_ppm=1.5)
    with pytest.raises(InputError, match="valid: original, both"): SparseDetConfig(ssl_target="augmented")
    with pytest.raises(InputError, match="erase_area"): SparseDetConfig(erase_area=(0.7, 0.4))


# --- training ---------------------------------------------------------------------------------------------------

def test_training_modes_and_mining_log(data, tmp_path):
    train, sparse = data
    base = train_detector(build_detector(2, **SMALL), sparse, mode="baseline", steps=2, batch_size=2, progress=False)
    assert set(k for k in base.history[0] if k.startswith("loss_")) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert len(base.parts["mining_log"]) == 0 and not base.model.training and not base.model.rpn.common

    cfg = SparseDetConfig(**LOW)
    res = train_detector(build_detector(2, **SMALL), sparse, cfg, mode="sparsedet", steps=4, batch_size=3, warmup_ppm=2, progress=False)
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert [h["mining"] for h in res.history] == [False, False, True, True]
    assert res.history[0]["loss_ssl"] == 0 and res.history[0]["n_pseudo_positives"] == 0
    assert res.history[-1]["n_pseudo_positives"] > 0
    log = res.parts["mining_log"]
    assert log.iterations() == [2, 3] and len(log) == 6        # every image of the two mining batches, found or not
    assert log.tau_ppm == 0.3 and log.min_objectness == 0.2
    for r in log.records:
        assert r.boxes.shape[1] == 4 and len(r.boxes) == len(r.objectness)
        assert (r.objectness > 0.2).all() and (r.boxes >= 0).all() and (r.boxes <= 64).all()
        assert 1 <= r.image_id <= len(sparse)
    n_used = sum(int((r.objectness > 0.3).sum()) for r in log.records)
    assert n_used == sum(h["n_pseudo_positives"] for h in res.history)
    # no mined box sits on a kept annotation (IoU < tau_bg with every annotation)
    from torchvision.ops import box_iou
    kept = sparse.kept_boxes()
    for r in log.records:
        if len(r.boxes) and len(kept[r.image_id]): assert box_iou(r.boxes, kept[r.image_id]).max() < 0.2
    q = evaluate_mining(log, sparse)
    assert q == mining_quality(log.mined(), sparse.removed_boxes(), kept=kept)
    assert q["n_removed"] == sparse.stats["n_removed"] and q["n_on_kept"] == 0
    run = log.running_quality(sparse.removed_boxes())
    assert [r["iteration"] for r in run] == [2, 3]
    path = log.save(tmp_path / "mining.json")
    back = MiningLog.load(path)
    assert back.iterations() == log.iterations() and all(torch.equal(a, b) for a, b in zip(back.mined().values(), log.mined().values()))
    with pytest.raises(InputError, match="does not exist"): MiningLog.load(tmp_path / "nope.json")
    assert res.model.rpn.common and res.info["warmup_ppm"] == 2 and res.info["config"]["tau_ppm"] == 0.3


def test_same_seed_same_losses(data):
    _, sparse = data
    cfg = SparseDetConfig(**LOW)
    run = lambda seed: train_detector(build_detector(2, **SMALL), sparse, cfg, mode="sparsedet", steps=3, batch_size=2,
                                      warmup_ppm=1, seed=seed, progress=False).history
    a, b, c = run(0), run(0), run(1)
    assert [h["loss"] for h in a] == [h["loss"] for h in b]
    assert a.rows == b.rows                               # every logged value of every step
    assert [h["loss"] for h in a] != [h["loss"] for h in c]


def test_train_detector_rejects_bad_input(data):
    _, sparse = data
    det = build_detector(2, **SMALL)
    with pytest.raises(InputError, match="unknown mode"): train_detector(det, sparse, mode="teacher", steps=1)
    with pytest.raises(InputError, match="steps"): train_detector(det, sparse, steps=0)
    with pytest.raises(InputError, match="empty"): train_detector(det, [], steps=1)


def test_training_leaves_global_rng_alone(data):
    _, sparse = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torch.set_num_threads(2)
    train_detector(build_detector(2, **SMALL), sparse, mode="baseline", steps=1, batch_size=2, progress=False, num_threads=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == 2   # num_threads holds for the run only


# --- data and evaluation ----------------------------------------------------------------------------------------

def test_sparse_dataset(data):
    train, sparse = data
    coco = samples_to_coco(train)
    assert [i["id"] for i in coco["images"]] == list(range(1, 13))
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2}
    n_total = sum(len(s.boxes) for s in train)
    kept = sum(len(sparse[i].boxes) for i in range(len(sparse)))
    removed = sum(len(sparse[i].meta["removed_boxes"]) for i in range(len(sparse)))
    assert kept + removed == n_total and removed == sparse.stats["n_removed"] == sum(len(a) for a in sparse.removed_boxes().values())
    assert sparse[2].masks is None and sparse[2].meta["image_id"] == 3
    for i in range(len(sparse)):   # kept and removed boxes are the sample's boxes, split
        both = torch.cat([sparse[i].boxes, sparse[i].meta["removed_boxes"]])
        assert sorted(both.tolist()) == sorted(train[i].boxes.tolist())
    other = rectangle_samples(5, seed=7)
    with pytest.raises(InputError, match="other images"):
        SparseDetectionDataset(other, sparse.split)


def test_evaluate_detector_uses_complete_annotations(data):
    train, sparse = data
    det = build_detector(2, **SMALL).eval()
    r = evaluate_detector(det, sparse)
    assert sum(c["n_gt"] for c in r["per_class"].values()) == sum(len(s.boxes) for s in train)
    assert 0 <= r["AP"] <= 1 and r["n_images"] == len(train)
    assert gap_closed(0.2, 0.3, 0.4) == pytest.approx(0.5) and gap_closed(0.4, 0.5, 0.4) is None


def test_rpn_proposals_and_recall_on_kept_and_removed(data):
    train, sparse = data
    det = build_detector(2, **SMALL).eval()
    props = rpn_proposals(det, [s.image for s in train], batch_size=5)
    assert len(props) == len(train)
    for p in props:
        assert (p["objectness"][:-1] >= p["objectness"][1:]).all() and 0 <= p["objectness"].min() <= p["objectness"].max() <= 1
        assert p["boxes"].min() >= 0 and p["boxes"].max() <= 64
    # the proposals are those of the model's own RPN: the top box of image 0 is what rpn.propose gives
    with torch.no_grad():
        il, _ = det.transform([train[0].image.float() / 255])
        b, s, _ = det.rpn.propose(il, det.backbone(il.tensors))
    assert torch.allclose(props[0]["objectness"], s[0].sort(descending=True).values)
    r = rpn_recall(det, sparse, top_k=50)
    assert (r["n_known"], r["n_held_out"]) == (sparse.stats["n_kept"], sparse.stats["n_removed"])
    # recall by hand: a removed box counts as held out, a kept one as known
    hit_k = hit_r = 0
    for i, s in enumerate(train):
        top = props[i]["boxes"][:50]
        ok = (box_iou(s.boxes, top).max(1).values >= 0.5) if len(top) else torch.zeros(len(s.boxes), dtype=torch.bool)
        hit_k += int(ok[sparse.kept_index[i]].sum()); hit_r += int(ok[sparse.removed_index[i]].sum())
    assert r["recall_known"] == pytest.approx(hit_k / r["n_known"]) and r["recall_held_out"] == pytest.approx(hit_r / r["n_held_out"])
    plain = rpn_recall(det, train, top_k=50)
    assert plain["n_held_out"] == 0 and plain["recall"] == pytest.approx((hit_k + hit_r) / (r["n_known"] + r["n_held_out"]))


def test_aerial_world_samples_train():
    worlds = pytest.importorskip("workbench.data.worlds")
    samples = worlds.AerialWorld(size=64, seed=0)[:6]
    ds = SparseDetectionDataset.from_split(samples, "split1", 0.5, seed=0)
    assert ds.class_names == ["airplane", "car", "building"]
    res = train_detector(build_detector(3, **SMALL), ds, SparseDetConfig(**LOW), mode="sparsedet", steps=2, batch_size=3,
                         warmup_ppm=0, progress=False)
    assert all(math.isfinite(h["loss"]) for h in res.history) and len(res.parts["mining_log"]) == 6
