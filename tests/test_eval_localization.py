"workbench.eval.localization against values worked out by hand on tiny maps (boxes are xyxy, right/bottom exclusive)."
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_names_argument
import torch.nn.functional as F

from workbench.core import InputError
from workbench.eval import localization
from workbench.eval.localization import (best_box_iou, box_best_iou, cam_boxes, corloc, gt_known_loc, localization_hits,
                                         localization_hits_at, max_box_acc)
from workbench.eval.maps import SaliencyMaps, normalize_maps


def boxes_list(out):
    "cam_boxes output as nested Python lists, for exact comparison."
    return [b.tolist() for b in out]


def one_pixel_map():
    "One 5x8 map, zero except the pixel at row 3, column 5."
    m = torch.zeros(1, 5, 8)
    m[0, 3, 5] = 1.0
    return m


def two_blobs():
    "One 6x6 map: a 3x3 block (rows 0-2, cols 0-2, 9 px) and, not touching it, a 2-pixel strip (row 5, cols 4-5)."
    m = torch.zeros(1, 6, 6)
    m[0, 0:3, 0:3] = 1.0
    m[0, 5, 4:6] = 1.0
    return m


# ---- normalize_maps

def test_normalize_min_max_per_map():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[-2.0, 0.0], [0.0, 2.0]]])
    out = normalize_maps(maps)
    assert out.dtype == torch.float32
    # map 0: (x - 1) / (9 - 1) -> 0, 2/8, 4/8, 8/8; map 1: (x + 2) / 4 -> 0, 0.5, 0.5, 1 (each map scaled on its own)
    assert out.tolist() == [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.5], [0.5, 1.0]]]


def test_normalize_constant_and_nonfinite_maps_become_zeros():
    maps = torch.tensor([[[7.0, 7.0], [7.0, 7.0]], [[0.0, float("nan")], [1.0, 2.0]], [[0.0, float("inf")], [1.0, 2.0]]])
    assert normalize_maps(maps).tolist() == [[[0.0] * 2] * 2] * 3  # max == min, NaN, inf: all zeros (wsolevaluation's rule)


def test_normalize_accepts_numpy_and_integers():
    out = normalize_maps(np.array([[[0, 50], [100, 200]]], dtype=np.uint8))
    assert out.tolist() == [[[0.0, 0.25], [0.5, 1.0]]]  # x / 200


# ---- cam_boxes

def test_one_pixel_box():
    # the single pixel at (row 3, col 5) spans rows 3..3 and cols 5..5 -> (x0, y0, x1, y1) = (5, 3, 6, 4)
    assert boxes_list(cam_boxes(one_pixel_map(), 0.5)) == [[[5.0, 3.0, 6.0, 4.0]]]


def test_threshold_is_strict_and_applies_to_the_normalised_map():
    maps = torch.tensor([[[10.0, 20.0, 30.0]]])  # normalised: (x - 10) / 20 -> 0, 0.5, 1
    assert boxes_list(cam_boxes(maps, 0.5)) == [[[2.0, 0.0, 3.0, 1.0]]]   # 0.5 > 0.5 is false: only column 2 kept
    assert boxes_list(cam_boxes(maps, 0.49)) == [[[1.0, 0.0, 3.0, 1.0]]]  # columns 1-2
    assert boxes_list(cam_boxes(maps, 0.0)) == [[[1.0, 0.0, 3.0, 1.0]]]   # the minimum (0) is never > 0
    out = cam_boxes(maps, 1.0)                                             # 1 > 1 is false: nothing kept
    assert out[0].shape == (0, 4) and out[0].dtype == torch.float32


def test_constant_map_has_no_box():
    maps = torch.full((2, 4, 4), 7.0)
    maps[1] = 0.0
    out = cam_boxes(maps, 0.0)  # constant -> all zeros after normalisation -> nothing is > 0
    assert [b.shape for b in out] == [(0, 4), (0, 4)]
    whole = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    assert gt_known_loc(maps, whole, 0.0) == 0.0  # no predicted box counts as wrong even against the whole image


def test_largest_only_vs_all_components():
    maps = two_blobs()
    assert boxes_list(cam_boxes(maps, 0.5)) == [[[0.0, 0.0, 3.0, 3.0]]]  # 9 px beats 2 px
    # every component, in scipy's label (raster) order: block first, then the strip (cols 4-5, row 5)
    assert boxes_list(cam_boxes(maps, 0.5, largest_only=False)) == [[[0.0, 0.0, 3.0, 3.0], [4.0, 5.0, 6.0, 6.0]]]


def test_eight_connectivity():
    maps = torch.zeros(1, 3, 3)
    maps[0, 0, 0] = maps[0, 1, 1] = 1.0  # diagonal neighbours: one 8-connected component (two with 4-connectivity)
    assert boxes_list(cam_boxes(maps, 0.5, largest_only=False)) == [[[0.0, 0.0, 2.0, 2.0]]]


def test_largest_tie_takes_first_label():
    maps = torch.zeros(1, 3, 4)
    maps[0, 2, 0] = maps[0, 0, 3] = 1.0  # two 1-px components; raster order labels (row 0, col 3) first
    assert boxes_list(cam_boxes(maps, 0.5)) == [[[3.0, 0.0, 4.0, 1.0]]]


# ---- localization_hits / gt_known_loc

def test_one_pixel_iou():
    maps = one_pixel_map()
    assert gt_known_loc(maps, torch.tensor([[5.0, 3.0, 6.0, 4.0]]), 0.5) == 1.0  # identical 1-px boxes: IoU 1
    two_px = torch.tensor([[5.0, 3.0, 7.0, 4.0]])  # 2 px wide, contains the predicted pixel: IoU = 1 / 2
    assert gt_known_loc(maps, two_px, 0.5, iou=0.5) == 1.0   # 0.5 >= 0.5
    assert gt_known_loc(maps, two_px, 0.5, iou=0.51) == 0.0  # 0.5 < 0.51
    assert gt_known_loc(maps, torch.tensor([[6.0, 3.0, 7.0, 4.0]]), 0.5) == 0.0  # the neighbouring pixel: IoU 0


def test_several_gt_boxes_any_match():
    maps = torch.zeros(3, 4, 4)
    maps[:, 0:2, 0:2] = 1.0  # every image predicts the 2x2 box (0, 0, 2, 2), area 4
    far, half = [2.0, 2.0, 4.0, 4.0], [0.0, 0.0, 2.0, 1.0]  # IoU 0; IoU 2 / 4 = 0.5 (top row of the box)
    gts = [torch.tensor([far, half]), torch.tensor([far, [3.0, 0.0, 4.0, 1.0]]), torch.zeros(0, 4)]
    hits = localization_hits(maps, gts, 0.5)
    assert hits.dtype == torch.bool
    assert hits.tolist() == [True, False, False]  # second GT box matches; no box matches; no GT box at all
    assert gt_known_loc(maps, gts, 0.5) == pytest.approx(1 / 3)  # 1 correct of 3


def test_gt_boxes_as_one_n_by_4_array():
    maps = torch.zeros(2, 4, 4)
    maps[:, 0:2, 0:2] = 1.0
    gts = np.array([[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0]])  # one box per image: IoU 1, IoU 0
    assert localization_hits(maps, gts, 0.5).tolist() == [True, False]


def test_small_component_matches_only_without_largest_only():
    gt = [torch.tensor([[4.0, 5.0, 6.0, 6.0]])]  # the 2-px strip of two_blobs
    assert gt_known_loc(two_blobs(), gt, 0.5) == 0.0  # largest box (0, 0, 3, 3) does not overlap it: IoU 0
    assert gt_known_loc(two_blobs(), gt, 0.5, largest_only=False) == 1.0  # the strip's own box: IoU 1



# ---- best_box_iou (binary masks, any rule)

def test_best_box_iou_of_masks_by_hand():
    masks = two_blobs().bool()  # the 3x3 block's box (0, 0, 3, 3), area 9; the strip's (4, 5, 6, 6), area 2
    taller = torch.tensor([[0.0, 0.0, 3.0, 4.0]])  # area 12, holds the block: IoU 9 / 12 = 0.75
    strip = torch.tensor([[4.0, 5.0, 6.0, 6.0]])
    assert best_box_iou(masks, [taller]).tolist() == [0.75]
    assert best_box_iou(masks, [strip]).tolist() == [0.0]  # largest box only: the block does not touch the strip
    assert best_box_iou(masks, [strip], largest_only=False).tolist() == [1.0]  # the strip's own box
    both = torch.cat([taller, strip])
    assert best_box_iou(masks, [both], largest_only=False).tolist() == [1.0]  # the best pair: strip with strip


def test_best_box_iou_empty_sides_and_numbers():
    empty, block = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    block[0, 0:2, 0:2] = 1  # 0/1 numbers count as binary: box (0, 0, 2, 2)
    gt = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]
    assert best_box_iou(torch.cat([empty, block]), gt * 2).tolist() == [0.0, 1.0]  # no predicted box: 0
    assert best_box_iou(block, [torch.zeros(0, 4)]).tolist() == [0.0]  # no GT box: 0


def test_best_box_iou_agrees_with_localization_hits():
    maps, gts = two_image_example()
    for t in (0.1, 0.5, 0.9):
        masks = SaliencyMaps(maps, maps.shape[-2:]).masks("max", t)  # the 'max' rule cuts what cam_boxes cuts
        assert (best_box_iou(masks, gts) >= 0.5).tolist() == localization_hits(maps, gts, t).tolist()


def test_localization_hits_at_matches_one_threshold_at_a_time():
    g = torch.Generator().manual_seed(0)
    maps = SaliencyMaps(torch.rand(12, 4, 4, generator=g), (16, 16))
    gts = [torch.tensor([[2.0, 2.0, 9.0, 10.0]]), torch.zeros(0, 4)] * 6
    ths = [0.2, 0.45, 0.7]
    for largest in (True, False):
        grid = localization_hits_at(maps, gts, ths, largest_only=largest, min_area=3)
        assert grid.shape == (3, 12) and grid.dtype == torch.bool
        for row, t in zip(grid, ths):
            assert row.tolist() == localization_hits(maps, gts, t, largest_only=largest, min_area=3).tolist()
        assert not grid[:, 1::2].any()                       # no GT box: never a hit
    with pytest.raises(InputError, match="thresholds"):
        localization_hits_at(maps, gts, [])


def test_upsampled_object_3x3_to_6x6():
    low = torch.zeros(1, 3, 3)
    low[0, 1, 1] = 1.0
    maps = SaliencyMaps(low, (6, 6), method="toy")                  # the package's result type, upsampled bilinearly
    # bilinear 3 -> 6 (align_corners=False) of the profile (0, 1, 0) along each axis: (0, .25, .75, .75, .25, 0);
    # the 2-D map is the outer product: .5625 on rows/cols 2-3, .1875 on the ring around them, .0625 at its corners.
    # Normalised by .5625: 1, 1/3, 1/9.
    assert boxes_list(cam_boxes(maps, 0.5)) == [[[2.0, 2.0, 4.0, 4.0]]]  # only the value-1 centre
    assert boxes_list(cam_boxes(maps, 0.3)) == [[[1.0, 1.0, 5.0, 5.0]]]  # 1/3 > 0.3 adds the ring: rows/cols 1-4
    gt = [torch.tensor([[2.0, 2.0, 4.0, 4.0]])]  # the centre 2x2 of the 6x6 image
    assert gt_known_loc(maps, gt, 0.5) == 1.0  # IoU 4 / 4
    assert gt_known_loc(maps, gt, 0.3) == 0.0  # IoU 4 / 16 = 0.25 < 0.5
    assert gt_known_loc(maps, gt, 0.3, iou=0.25) == 1.0  # 0.25 >= 0.25


# ---- max_box_acc

def two_image_example():
    "Maps A and B (4x4) and one GT box each; see the comments in the tests for the IoUs."
    a = torch.zeros(4, 4)
    a[0:2, 0:2], a[2, 0:2], a[3, 0:2] = 8.0, 5.0, 1.0  # normalised: 1, 0.625, 0.125 in columns 0-1 (one component)
    b = torch.zeros(4, 4)
    b[0, 0:3], b[3, 3] = 8.0, 4.0  # normalised: 1 on a 3-px strip, 0.5 on one pixel (two components)
    gts = [torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[3.0, 3.0, 4.0, 4.0]])]
    return torch.stack([a, b]), gts


THRESHOLDS = (0.0, 0.25, 0.5, 0.75)
# A (one component, so largest_only does not matter), GT (0, 0, 2, 2) of area 4:
#   t = 0:          rows 0-3 kept -> box (0, 0, 2, 4), area 8 -> IoU 4/8 = 0.5
#   t = 0.25, 0.5:  rows 0-2 kept (0.625 > t) -> box (0, 0, 2, 3), area 6 -> IoU 4/6 = 0.667
#   t = 0.75:       rows 0-1 kept -> box (0, 0, 2, 2) -> IoU 1
# B, GT (3, 3, 4, 4): the strip (0, 0, 3, 1) has IoU 0; the pixel (3, 3, 4, 4) has IoU 1 and is kept while 0.5 > t:
#   largest_only:   IoU 0 at every threshold
#   all components: IoU 1 at t = 0, 0.25; 0 at t = 0.5 (0.5 > 0.5 is false), 0.75


def test_max_box_acc_hand_example():
    maps, gts = two_image_example()
    out = max_box_acc(maps, gts, thresholds=THRESHOLDS, ious=(0.5, 0.6, 0.7))
    assert out["thresholds"] == list(THRESHOLDS)
    assert out["curve"] == {
        0.5: [0.5, 0.5, 0.5, 0.5],  # A right everywhere (0.5 >= 0.5 at t = 0), B never: 1/2
        0.6: [0.0, 0.5, 0.5, 0.5],  # A wrong at t = 0 (0.5 < 0.6)
        0.7: [0.0, 0.0, 0.0, 0.5],  # A right only at t = 0.75 (0.667 < 0.7)
    }
    assert out["per_iou"] == {0.5: 0.5, 0.6: 0.5, 0.7: 0.5}
    assert out["best_threshold"] == {0.5: 0.0, 0.6: 0.25, 0.7: 0.75}  # lowest threshold reaching the max
    assert out["max_box_acc"] == pytest.approx(0.5)  # (0.5 + 0.5 + 0.5) / 3


def test_max_box_acc_v2_hand_example():
    maps, gts = two_image_example()
    out = max_box_acc(maps, gts, thresholds=THRESHOLDS, ious=(0.3, 0.5, 0.7), largest_only=False)
    assert out["curve"] == {
        0.3: [1.0, 1.0, 0.5, 0.5],  # A always; B at t = 0, 0.25
        0.5: [1.0, 1.0, 0.5, 0.5],  # same (A's 0.5 >= 0.5)
        0.7: [0.5, 0.5, 0.0, 0.5],  # A only at 0.75, B at 0 and 0.25
    }
    assert out["per_iou"] == {0.3: 1.0, 0.5: 1.0, 0.7: 0.5}
    assert out["best_threshold"] == {0.3: 0.0, 0.5: 0.0, 0.7: 0.0}  # 0.7: tie of 0, 0.25 and 0.75 -> 0
    assert out["max_box_acc"] == pytest.approx((1.0 + 1.0 + 0.5) / 3)  # 0.8333


def test_max_box_acc_agrees_with_gt_known_loc_per_threshold():
    maps, gts = two_image_example()
    out = max_box_acc(maps, gts, thresholds=THRESHOLDS, ious=(0.3, 0.7), largest_only=False)
    for iou in (0.3, 0.7):
        assert out["curve"][iou] == [gt_known_loc(maps, gts, t, iou=iou, largest_only=False) for t in THRESHOLDS]


def test_max_box_acc_tie_takes_lowest_threshold_value_not_position():
    maps, gts = two_image_example()
    out = max_box_acc(maps, gts, thresholds=(0.75, 0.25, 0.5), ious=(0.6,))  # all three reach 1/2 at IoU 0.6
    assert out["curve"][0.6] == [0.5, 0.5, 0.5]
    assert out["best_threshold"][0.6] == 0.25


def test_max_box_acc_default_thresholds():
    maps, gts = two_image_example()
    out = max_box_acc(maps, gts)
    assert out["thresholds"] == np.arange(0, 1, 0.01).tolist() and len(out["thresholds"]) == 100
    # IoU 0.5, largest only: A right at every threshold (IoU 0.5, 0.667 or 1), B never -> 0.5 everywhere
    assert out["curve"][0.5] == [0.5] * 100 and out["max_box_acc"] == 0.5 and out["best_threshold"] == {0.5: 0.0}


def test_max_box_acc_normalises_once(monkeypatch):
    calls = []
    original = localization.normalize_maps
    monkeypatch.setattr(localization, "normalize_maps", lambda m: calls.append(1) or original(m))
    maps, gts = two_image_example()
    max_box_acc(maps, gts, thresholds=np.linspace(0, 0.9, 10))
    assert len(calls) == 1


# ---- bad input

def nan_maps():
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = float("nan")
    return m


GT1 = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]


@pytest.mark.parametrize("call, name", [
    (lambda: cam_boxes(nan_maps(), 0.5), "maps"),
    (lambda: gt_known_loc(nan_maps(), GT1, 0.5), "maps"),
    (lambda: max_box_acc(nan_maps(), GT1), "maps"),
    (lambda: cam_boxes(torch.full((1, 2, 2), float("inf")), 0.5), "maps"),
    (lambda: cam_boxes(torch.zeros(4, 4), 0.5), "maps"),                      # a single (H, W) map
    (lambda: cam_boxes(torch.zeros(1, 1, 4, 4), 0.5), "maps"),
    (lambda: cam_boxes(torch.zeros(0, 4, 4), 0.5), "maps"),                   # no images
    (lambda: cam_boxes([torch.zeros(4, 4)], 0.5), "maps"),                    # a list is not a stack
    (lambda: cam_boxes(torch.zeros(1, 4, 4), -0.1), "threshold"),
    (lambda: cam_boxes(torch.zeros(1, 4, 4), 1.5), "threshold"),
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), GT1, 0.5, iou=0.0), "iou"),
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), GT1, 0.5, iou=1.2), "iou"),
    (lambda: max_box_acc(torch.zeros(1, 4, 4), GT1, thresholds=[0.5, 1.2]), "thresholds"),
    (lambda: max_box_acc(torch.zeros(1, 4, 4), GT1, thresholds=[]), "thresholds"),
    (lambda: max_box_acc(torch.zeros(1, 4, 4), GT1, ious=(0.0, 0.5)), "ious"),
    (lambda: max_box_acc(torch.zeros(1, 4, 4), GT1, ious=(0.5, 0.5)), "ious"),
    (lambda: gt_known_loc(torch.zeros(2, 4, 4), GT1, 0.5), "gt_boxes"),       # 1 entry for 2 maps
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), torch.zeros(3, 4), 0.5), "gt_boxes"),
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), [torch.zeros(2, 5)], 0.5), "gt_boxes[0]"),
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), [torch.zeros(4)], 0.5), "gt_boxes[0]"),
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), [torch.tensor([[3.0, 0.0, 1.0, 2.0]])], 0.5), "gt_boxes[0]"),  # x1 < x0
    (lambda: gt_known_loc(torch.zeros(1, 4, 4), [torch.tensor([[0.0, 0.0, float("nan"), 2.0]])], 0.5), "gt_boxes[0]"),
    (lambda: max_box_acc(torch.zeros(1, 4, 4), [torch.zeros(1, 3)]), "gt_boxes[0]"),
    (lambda: best_box_iou(torch.full((1, 2, 2), 0.5), GT1), "masks"),             # not binary
    (lambda: best_box_iou(torch.zeros(4, 4), GT1), "masks"),                      # a single (H, W) mask
    (lambda: best_box_iou(torch.zeros(2, 4, 4, dtype=torch.bool), GT1), "gt_boxes"),
])
def test_bad_input_names_the_argument(call, name):
    assert_names_argument(call, name)



# ---- CorLoc (one box per image; IoU strictly above the level)

CORLOC_PRED = torch.tensor([[0., 0., 4., 4.], [0., 0., 2., 1.], [0., 0., 4., 4.], [5., 5., 6., 6.]])
CORLOC_GT = [torch.tensor([[0., 0., 4., 4.]]),                        # the same box: IoU 1
             torch.tensor([[0., 0., 1., 1.]]),                        # 1 px of 2: IoU exactly 0.5
             torch.tensor([[10., 10., 12., 12.], [0., 0., 4., 3.]]),  # the best of two: 12/16
             torch.zeros(0, 4)]                                       # no ground truth


def test_box_best_iou_takes_the_most_overlapping_gt_box():
    assert box_best_iou(CORLOC_PRED, CORLOC_GT).tolist() == [1.0, 0.5, 0.75, 0.0]


def test_corloc_counts_iou_strictly_above_one_half():
    assert corloc(CORLOC_PRED, CORLOC_GT) == 0.5              # 1.0 and 0.75 count, exactly 0.5 and 0 do not
    assert corloc(CORLOC_PRED[1:2], CORLOC_GT[1:2]) == 0.0    # IoU exactly 0.5 is a miss
    assert corloc(CORLOC_PRED[1:2], CORLOC_GT[1:2], iou=0.49) == 1.0
    assert corloc(list(CORLOC_PRED), CORLOC_GT) == 0.5        # a list of (4,) boxes
    assert corloc(CORLOC_PRED[:2], torch.tensor([[0., 0., 4., 4.], [0., 0., 2., 2.]])) == 0.5  # (N, 4): one GT box each
    assert corloc(np.array([[0., 0., 2., 2.]]), [np.array([[1., 0., 3., 2.]])]) == 0.0          # IoU 1/3, numpy inputs


@pytest.mark.parametrize("call, name", [
    (lambda: corloc(CORLOC_PRED, CORLOC_GT[:3]), "gt_boxes"),                 # 3 entries for 4 boxes
    (lambda: corloc(CORLOC_PRED[0], CORLOC_GT[:1]), "pred_boxes"),            # one (4,) box, not (N, 4)
    (lambda: corloc(torch.zeros(0, 4), []), "pred_boxes"),                    # no boxes
    (lambda: corloc([torch.zeros(4), torch.zeros(5)], CORLOC_GT[:2]), "pred_boxes"),
    (lambda: corloc(torch.tensor([[2., 0., 1., 1.]]), CORLOC_GT[:1]), "pred_boxes"),   # x1 < x0
    (lambda: corloc(CORLOC_PRED, CORLOC_GT, iou=1.5), "iou"),
])
def test_corloc_bad_input_names_the_argument(call, name):
    assert_names_argument(call, name)
