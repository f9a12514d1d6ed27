"workbench.eval.saliency against values worked out by hand on tiny masks (beta^2 = 0.3 unless said otherwise)."
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_names_argument

from workbench.core import InputError
from workbench.eval.maps import SaliencyMaps
from workbench.eval.saliency import iou_per_image, mask_iou, max_f_beta, pixel_accuracy, pixel_iou

B2 = 0.3


def f_beta(p: float, r: float, beta2: float = B2) -> float:
    "F-beta of a precision and a recall, by the formula (0 where P = R = 0)."
    return (1 + beta2) * p * r / (beta2 * p + r) if p or r else 0.0


def two_images():
    "Image 1: a pred on a 2x2 mask of the left column; image 2: an empty mask and a faint pred in one corner."
    preds = [torch.tensor([[0.9, 0.6], [0.3, 0.1]]), torch.tensor([[0.2, 0.0], [0.0, 0.0]])]
    gts = [torch.tensor([[1, 0], [1, 0]]), torch.zeros(2, 2, dtype=torch.bool)]
    return preds, gts


def loop_curve(preds, gts, beta2, n):
    "The F-beta curve by plain thresholding, one threshold at a time (reference for the histogram version)."
    curve = []
    for k in range(n):
        fs = []
        for p, g in zip(preds, gts):
            keep = p > k / n
            tp, fp, pos = int((keep & g).sum()), int((keep & ~g).sum()), int(g.sum())
            precision = tp / (tp + fp) if tp + fp else 1.0
            recall = tp / pos if pos else 1.0
            fs.append(f_beta(precision, recall, beta2))
        curve.append(sum(fs) / len(fs))
    return curve


# ---- max_f_beta

def test_max_f_beta_hand_example_four_thresholds():
    preds, gts = two_images()
    out = max_f_beta(preds, gts, n_thresholds=4)
    assert out["thresholds"] == [0.0, 0.25, 0.5, 0.75]
    # image 1 (GT = left column: the 0.9 and 0.3 pixels)
    #   t = 0:    all 4 kept, TP 2 FP 2 -> P 1/2, R 1   -> 1.3 * .5 / (.15 + 1)       = 0.565217
    #   t = .25:  0.9 0.6 0.3, TP 2 FP 1 -> P 2/3, R 1  -> 1.3 * 2/3 / (.2 + 1)       = 0.722222
    #   t = .5:   0.9 0.6, TP 1 FP 1 -> P 1/2, R 1/2    -> 1.3 * .25 / (.15 + .5)     = 0.5
    #   t = .75:  0.9, TP 1 FP 0 -> P 1, R 1/2          -> 1.3 * .5 / (.3 + .5)       = 0.8125
    # image 2 (empty GT, so R = 1)
    #   t = 0:    0.2 kept, TP 0 FP 1 -> P 0, R 1       -> 0
    #   t >= .25: nothing kept -> P 1 (empty pred), R 1 -> 1
    expected = [(0.565217391 + 0) / 2, (0.722222222 + 1) / 2, (0.5 + 1) / 2, (0.8125 + 1) / 2]
    assert out["curve"] == pytest.approx(expected, abs=1e-8)  # 0.282609, 0.861111, 0.75, 0.90625
    assert out["max_f"] == pytest.approx(0.90625) and out["threshold"] == 0.75


def test_max_f_beta_hand_example_default_thresholds():
    preds, gts = two_images()
    out = max_f_beta(preds, gts)
    assert out["thresholds"] == [k / 255 for k in range(255)] and len(out["curve"]) == 255
    assert out["curve"][0] == pytest.approx((0.565217391 + 0) / 2)  # t = 0 as above
    # best: image 1 at P 1, R 1/2 (only 0.9 kept: 0.6 <= t < 0.9) and image 2 at 1 (t >= 0.2) -> (0.8125 + 1) / 2;
    # 153 / 255 = 0.6 exactly, and 0.6 > 0.6 is false, so the lowest such threshold is k = 153
    assert out["max_f"] == pytest.approx(0.90625) and out["threshold"] == 153 / 255
    assert out["curve"][152] == pytest.approx((0.5 + 1) / 2)  # 152/255 = 0.596 < 0.6: 0.6 still kept (P = R = 1/2)


def test_max_f_beta_other_beta2():
    preds, gts = two_images()
    out = max_f_beta(preds, gts, beta2=1.0, n_thresholds=4)
    # F1 of image 1: t = .25 -> 2 * (2/3) / (2/3 + 1) = 0.8; t = .75 -> 2 * .5 / 1.5 = 0.6667; image 2 is 1 from t = .25
    assert out["curve"][1] == pytest.approx((0.8 + 1) / 2) and out["curve"][3] == pytest.approx((2 / 3 + 1) / 2)
    assert out["max_f"] == pytest.approx(0.9) and out["threshold"] == 0.25


@pytest.mark.parametrize("pred, gt, expected", [
    ([[0.0, 0.0]], [[0, 1]], 0.0),        # empty prediction, non-empty GT: P 1, R 0 -> 1.3 * 0 / 0.3 = 0
    ([[0.9, 0.0]], [[0, 0]], 0.0),        # non-empty prediction, empty GT: P 0, R 1 -> 0
    ([[0.0, 0.0]], [[0, 0]], 1.0),        # both empty: P 1, R 1 -> 1
    ([[0.9, 0.0]], [[0, 1]], 0.0),        # disjoint: P 0, R 0 -> undefined, counted 0
    ([[0.9, 0.0, 0.0]], [[1, 1, 0]], f_beta(1.0, 0.5)),  # P 1, R 1/2 -> 0.65 / 0.8 = 0.8125
])
def test_max_f_beta_empty_cases(pred, gt, expected):
    out = max_f_beta([torch.tensor(pred)], [torch.tensor(gt)], n_thresholds=2)  # thresholds 0 and 0.5
    assert out["curve"][1] == pytest.approx(expected)


def test_max_f_beta_equals_plain_loop_on_random_data():
    g = torch.Generator().manual_seed(0)
    preds, gts = [], []
    for i, (h, w) in enumerate([(5, 7), (8, 8), (3, 4), (6, 5), (9, 2), (4, 4)]):
        p = torch.randint(0, 256, (h, w), generator=g) / 255.0 if i % 2 else torch.rand(h, w, generator=g)  # k/255 values hit thresholds exactly
        preds.append(p)
        gts.append(torch.rand(h, w, generator=g) < 0.4)
    gts[2] = torch.zeros(3, 4, dtype=torch.bool)  # an empty GT
    preds[4] = torch.zeros(9, 2)                   # an all-zero prediction
    for beta2, n in [(0.3, 255), (1.0, 17), (0.5, 1)]:
        out = max_f_beta(preds, gts, beta2=beta2, n_thresholds=n)
        ref = loop_curve(preds, gts, beta2, n)
        assert out["curve"] == pytest.approx(ref, abs=1e-12)
        assert out["max_f"] == pytest.approx(max(ref), abs=1e-12)
        assert out["threshold"] == ref.index(max(ref)) / n


def test_max_f_beta_resizes_bilinearly():
    pred = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # 2x2, left 0 right 1
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :, 2:] = True                               # 4x4, right half
    # bilinear 2 -> 4 (align_corners=False) of (0, 1) per row: (0, .25, .75, 1)
    #   t = 0:    cols 1-3, TP 8 FP 4 -> P 2/3, R 1 -> 0.722222
    #   t = .25:  .25 not kept: cols 2-3 -> P 1, R 1 -> 1
    #   t = .5:   cols 2-3 -> 1
    #   t = .75:  .75 not kept: col 3, TP 4 -> P 1, R 1/2 -> 0.8125
    out = max_f_beta(pred, gt, n_thresholds=4)
    assert out["curve"] == pytest.approx([f_beta(2 / 3, 1.0), 1.0, 1.0, 0.8125])
    assert out["threshold"] == 0.25


def test_upsampled_object_and_numpy_inputs():
    preds, gts = two_images()
    out = max_f_beta(SaliencyMaps(torch.stack(preds), (2, 2)), np.stack([g.numpy() for g in gts]), n_thresholds=4)
    assert out["max_f"] == pytest.approx(0.90625)  # as in the hand example


# ---- mask_iou, iou_per_image, pixel_accuracy

def test_mask_iou_hand_example():
    preds, gts = two_images()
    # t = .5: image 1 keeps 0.9 0.6 (top row) vs the left column: 1 / 3; image 2: both empty -> 1
    assert mask_iou(preds, gts) == pytest.approx((1 / 3 + 1) / 2)
    # t = .1: image 1 keeps 0.9 0.6 0.3: inter 2, union 3; image 2 keeps 0.2 against an empty GT: 0 / 1
    assert mask_iou(preds, gts, threshold=0.1) == pytest.approx((2 / 3 + 0) / 2)


def test_pixel_accuracy_hand_example():
    preds, gts = two_images()
    # t = .5: image 1 [[1, 1], [0, 0]] vs [[1, 0], [1, 0]] agrees at 2 of 4; image 2 empty vs empty: 4 of 4
    assert pixel_accuracy(preds, gts) == pytest.approx((0.5 + 1.0) / 2)
    # t = .1: image 1 [[1, 1], [1, 0]]: 3 of 4; image 2 [[1, 0], [0, 0]] vs empty: 3 of 4
    assert pixel_accuracy(preds, gts, threshold=0.1) == pytest.approx(0.75)


def test_threshold_is_strict():
    pred, gt = [torch.tensor([[0.5, 0.7]])], [torch.tensor([[1, 1]])]
    assert mask_iou(pred, gt, threshold=0.5) == pytest.approx(0.5)       # 0.5 > 0.5 is false: 1 of 2
    assert pixel_accuracy(pred, gt, threshold=0.5) == pytest.approx(0.5)
    assert mask_iou(pred, gt, threshold=0.49) == 1.0


def test_resized_iou_and_accuracy():
    pred = [torch.tensor([[0.0, 1.0], [0.0, 1.0]])]  # resized to 4x4: every row (0, .25, .75, 1)
    gt = torch.zeros(1, 4, 4, dtype=torch.bool)
    gt[0, :, 2:] = True
    assert mask_iou(pred, gt) == 1.0 and pixel_accuracy(pred, gt) == 1.0  # t = .5: cols 2-3, exactly the GT
    # t = .2: cols 1-3 (12 px) vs cols 2-3 (8 px): IoU 8 / 12; accuracy: column 1 wrong, 12 / 16
    assert mask_iou(pred, gt, threshold=0.2) == pytest.approx(2 / 3)
    assert pixel_accuracy(pred, gt, threshold=0.2) == pytest.approx(0.75)
    # nearest-neighbour resizing would give (0, 0, 1, 1) and IoU 1 here: the 2/3 shows it is bilinear


def test_different_sizes_per_image():
    preds = [torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.9, 0.0, 0.0]] * 3)]
    gts = [torch.tensor([[0, 0, 1, 1]] * 4), torch.tensor([[1, 0, 0]] * 3)]  # 4x4 (pred resized), 3x3 (same size)
    assert mask_iou(preds, gts, threshold=0.2) == pytest.approx((2 / 3 + 1) / 2)  # as above; exact match


def test_soft_gts_are_cut_above_half():
    pred = [torch.tensor([[0.9, 0.9, 0.9]])]
    gt = [torch.tensor([[0.7, 0.5, 0.2]])]  # -> (1, 0, 0): 0.5 is not > 0.5
    assert mask_iou(pred, gt) == pytest.approx(1 / 3)


@pytest.mark.parametrize("pred, gt, expected", [
    ([[0, 0]], [[0, 0]], 1.0),                  # both empty: counted 1
    ([[0, 0]], [[0, 1]], 0.0),                  # empty prediction: 0 / 1
    ([[1, 0]], [[0, 0]], 0.0),                  # empty GT: 0 / 1
    ([[0, 1, 0]], [[0, 1, 0]], 1.0),            # one-pixel objects, same pixel: 1 / 1
    ([[0, 1, 0]], [[0, 1, 1]], 0.5),            # one pixel inside a 2-px GT: 1 / 2
    ([[1, 0, 0]], [[0, 0, 1]], 0.0),            # one-pixel objects apart: 0 / 2
])
def test_iou_per_image_cases(pred, gt, expected):
    out = iou_per_image([torch.tensor(pred, dtype=torch.bool)], [torch.tensor(gt, dtype=torch.bool)])
    assert out.dtype == torch.float32 and out.shape == (1,)
    assert out.item() == expected


def test_iou_per_image_stack():
    p = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    g = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]]])  # 0/1 integers are accepted as booleans
    assert iou_per_image(p, g).tolist() == pytest.approx([1 / 3, 1.0])  # inter 1 union 3; both empty


@pytest.mark.parametrize("pred, gt, expected", [
    ([[0.0, 0.0]], [[0, 0]], 1.0),   # both empty: every pixel right
    ([[0.0, 0.0]], [[0, 1]], 0.5),   # empty prediction: the GT pixel is wrong
    ([[0.9, 0.0]], [[0, 0]], 0.5),   # empty GT: the predicted pixel is wrong
])
def test_pixel_accuracy_empty_cases(pred, gt, expected):
    assert pixel_accuracy([torch.tensor(pred)], [torch.tensor(gt)]) == expected


# ---- bad input

P1, G1 = [torch.full((2, 2), 0.5)], [torch.ones(2, 2)]


def with_value(v):
    "One 2x2 map holding `v` in one corner."
    m = torch.full((2, 2), 0.5)
    m[0, 0] = v
    return [m]


@pytest.mark.parametrize("call, name", [
    (lambda: max_f_beta(with_value(float("nan")), G1), "preds[0]"),
    (lambda: max_f_beta(with_value(float("inf")), G1), "preds[0]"),
    (lambda: mask_iou(torch.stack(with_value(float("nan"))), G1), "preds"),
    (lambda: max_f_beta(with_value(-0.2), G1), "preds[0]"),
    (lambda: pixel_accuracy(torch.stack(with_value(1.5)), G1), "preds"),
    (lambda: max_f_beta(P1, [torch.full((2, 2), 2.0)]), "gts[0]"),
    (lambda: max_f_beta(P1, [torch.full((2, 2), float("nan"))]), "gts[0]"),
    (lambda: max_f_beta(P1, torch.full((1, 2, 2), -1.0)), "gts"),
    (lambda: max_f_beta(P1 * 2, G1), "gts"),                              # 1 mask for 2 preds
    (lambda: mask_iou(P1, G1 * 3), "gts"),
    (lambda: max_f_beta(torch.full((2, 2), 0.5), G1), "preds"),           # a single (H, W) map
    (lambda: max_f_beta([torch.full((1, 2, 2), 0.5)], G1), "preds[0]"),   # a list entry that is not 2-D
    (lambda: max_f_beta(P1, [torch.ones(4)]), "gts[0]"),
    (lambda: max_f_beta(P1, torch.ones(1, 1, 2, 2)), "gts"),
    (lambda: max_f_beta([], []), "preds"),                                # no images
    (lambda: max_f_beta(torch.zeros(0, 2, 2), torch.zeros(0, 2, 2)), "preds"),
    (lambda: max_f_beta("maps", G1), "preds"),
    (lambda: max_f_beta(P1, G1, beta2=0.0), "beta2"),
    (lambda: max_f_beta(P1, G1, beta2=-1.0), "beta2"),
    (lambda: max_f_beta(P1, G1, n_thresholds=0), "n_thresholds"),
    (lambda: max_f_beta(P1, G1, n_thresholds=2.5), "n_thresholds"),
    (lambda: mask_iou(P1, G1, threshold=1.5), "threshold"),
    (lambda: pixel_accuracy(P1, G1, threshold=-0.1), "threshold"),
    (lambda: iou_per_image([torch.ones(2, 2, dtype=torch.bool)], [torch.ones(3, 3, dtype=torch.bool)]), "gt_masks[0]"),
    (lambda: iou_per_image([torch.full((2, 2), 0.5)], [torch.ones(2, 2)]), "pred_masks[0]"),
    (lambda: iou_per_image([torch.ones(2, 2)], [torch.ones(2, 2)] * 2), "gt_masks"),
])
def test_bad_input_names_the_argument(call, name):
    assert_names_argument(call, name)


def test_range_error_reports_min_and_max():
    with pytest.raises(InputError, match=r"^preds: expected values in \[0, 1\] \(probabilities\), found min -0.2 max 1$"):
        max_f_beta(torch.tensor([[[-0.2, 1.0]]], dtype=torch.float64), [torch.tensor([[1, 0]])])


def test_saliency_maps_at_feature_resolution_score_at_the_masks_size():
    sm = SaliencyMaps(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), (4, 4))     # right half salient, at 2 x 2
    gt = torch.zeros(1, 4, 4, dtype=torch.bool); gt[0, :, 2:] = True
    # upsampled: columns 0, .25, .75, 1 -> above 0.5 exactly the right half
    assert mask_iou(sm, gt) == 1.0 and pixel_accuracy(sm, gt) == 1.0
    assert max_f_beta(sm, gt)["max_f"] == pytest.approx(1.0)


def test_iou_per_image_stack_and_list_paths_agree():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 6, 6, generator=g) > 0.5, torch.rand(5, 6, 6, generator=g) > 0.6
    a[0], b[0] = False, False                                                   # both empty: IoU 1
    stack = iou_per_image(a, b)
    assert stack.dtype == torch.float32 and stack[0] == 1.0
    assert torch.equal(stack, iou_per_image(list(a), list(b)))


def test_pixel_iou_pools_pixels_over_the_set():
    pred = torch.zeros(2, 4, 4, dtype=torch.bool); gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, :2] = True; gt[0, :1] = True                                       # image 1: 4 of 8 predicted pixels right
    pred[1, 0, 0] = True; gt[1, 0, 0] = True                                   # image 2: 1 of 1
    assert pixel_iou(pred, gt) == pytest.approx(5 / 9)                          # pooled: (4 + 1) / (8 + 1)
    assert pixel_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)) == 1.0
    with pytest.raises(InputError, match="differ in shape"):
        pixel_iou(pred[:1], gt)
