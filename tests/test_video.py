"""Video mask propagation: the procedural object videos (determinism, exact labels, speed), DAVIS sequences as videos,
label propagation (against a literal re-implementation of DINO's loop, oracle and random features, any grid) and DAVIS's
J and F on hand-made masks."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from conftest import assert_names_argument

from workbench.core import InputError
from workbench.data.datasets import DAVIS2017, save_indexed_png
from workbench.data.videos import ObjectVideos, Video, VideoConfig, davis_videos
from workbench.eval.video import (boundary_f, boundary_map, j_and_f, neighbourhood, propagate_labels, propagation_scores,
                                  region_j)

pytestmark = pytest.mark.usefixtures("one_thread")


def digest(v: Video) -> str:
    h = hashlib.sha256()
    for t in (v.frames, v.labels): h.update(t.numpy().tobytes())
    h.update(repr((v.object_ids, v.categories)).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- object videos

@pytest.fixture(scope="module")
def vids():
    return ObjectVideos(8, seed=5)


def test_same_seed_and_index_same_video_other_index_or_seed_another(vids):
    a, b = vids[3], ObjectVideos(8, seed=5)[3]
    assert digest(a) == digest(b) and a.meta["tracks"] == b.meta["tracks"]
    assert digest(vids[4]) != digest(a) and digest(ObjectVideos(8, seed=6)[3]) != digest(a)
    assert digest(ObjectVideos(100, seed=5)[3]) == digest(a)          # the set's length plays no part
    assert [digest(v) for v in vids[2:4]] == [digest(vids[2]), digest(a)]


def test_record_types_and_ids(vids):
    for v in vids[:4]:
        assert v.frames.shape == (12, 3, 64, 64) and v.frames.dtype == torch.uint8
        assert v.labels.shape == (12, 64, 64) and v.labels.dtype == torch.int64
        assert v.object_ids == list(range(1, len(v.categories) + 1)) and 1 <= len(v.object_ids) <= 3
        assert set(torch.unique(v.labels).tolist()) <= {0, *v.object_ids}
        assert sorted(v.meta["depth_order"]) == v.object_ids and len(v.meta["tracks"]) == len(v.object_ids)


def test_labels_are_the_front_most_of_the_objects_painted_alone(vids):
    overlapped = 0
    for i in range(len(vids)):
        v, alone = vids[i], vids.alone_masks(i)
        expect = torch.zeros_like(v.labels)
        for k in v.meta["depth_order"]: expect[alone[k - 1]] = k
        assert torch.equal(v.labels, expect)
        overlapped += bool((alone.sum(0) > 1).any())
        visible0 = v.masks()[:, 0].flatten(1).sum(1)
        assert (visible0 >= 0.3 * alone[:, 0].flatten(1).sum(1)).all() and (visible0 >= 8).all()
    assert overlapped >= 2, "objects should pass in front of each other in some videos"


def test_objects_move_smoothly_and_the_background_pans(vids):
    panned = 0
    for v in vids:
        assert not torch.equal(v.labels[0], v.labels[-1])
        for tr in v.meta["tracks"]:
            step = np.hypot(np.diff(tr["x"]), np.diff(tr["y"]))
            assert step.max() < 0.03 * 64 + 0.05 * 64 * np.pi / 11 + 1e-6
        panned += v.meta["pan"] != (0.0, 0.0)
        bg = v.labels == 0
        assert ((v.frames[1:].float() - v.frames[:-1].float()).abs().amax(1)[bg[1:] & bg[:-1]].mean() < 40)
    assert 0 < panned < len(vids)
    still = ObjectVideos(2, seed=5, p_pan=0.0)[0]
    bg = torch.from_numpy(binary_erosion((still.labels == 0).all(0).numpy(), iterations=2))    # away from antialiased edges
    assert torch.equal(still.frames[0][:, bg], still.frames[-1][:, bg])          # a still background is exactly still


def test_rendering_is_fast():
    ds = ObjectVideos(6, seed=1)
    ds[0]
    t0 = time.perf_counter()
    for i in range(len(ds)): ds[i]
    per_frame = (time.perf_counter() - t0) / (len(ds) * ds.frames)
    assert per_frame < 0.02, f"{per_frame * 1e3:.1f} ms per frame"


def test_sizes_frames_and_knobs():
    v = ObjectVideos(3, size=128, frames=5, seed=2, category=("star", "car"), n_objects=(2, 2))[1]
    assert v.frames.shape == (5, 3, 128, 128) and set(v.categories) <= {"star", "car"} and len(v.object_ids) <= 2


def test_bad_video_inputs():
    assert_names_argument(lambda: ObjectVideos(3, size=10), "size")
    assert_names_argument(lambda: ObjectVideos(-1), "n")
    assert_names_argument(lambda: ObjectVideos(3, frames=1), "frames")
    assert_names_argument(lambda: ObjectVideos(3, seed=-2), "seed")
    assert_names_argument(lambda: ObjectVideos(3, zoom=2), "zoom")
    assert_names_argument(lambda: ObjectVideos(3, blur=1), "knobs")
    assert_names_argument(lambda: VideoConfig(categories=()), "categories")
    assert_names_argument(lambda: ObjectVideos(3)["a"], "index")
    with pytest.raises(IndexError): ObjectVideos(3)[3]
    assert_names_argument(lambda: Video(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.int64), [], []), "frames")
    assert_names_argument(lambda: Video(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 4, 4), [], []), "labels")


# ---------------------------------------------------------------- DAVIS as videos

def make_davis(root: Path, seqs: dict) -> DAVIS2017:
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("".join(f"{s}\n" for s in seqs))
    for seq, arrays in seqs.items():
        (root / f"JPEGImages/480p/{seq}").mkdir(parents=True)
        (root / f"Annotations/480p/{seq}").mkdir(parents=True)
        for f, a in enumerate(arrays):
            colours = np.array([(20, 20, 20)] + [(50 * k % 256, 200 - 30 * k % 200, 90) for k in range(1, 256)], np.uint8)
            Image.fromarray(colours[a], "RGB").save(root / f"JPEGImages/480p/{seq}/{f:05d}.jpg", quality=95)   # objects show
            save_indexed_png(a.astype(np.uint8), root / f"Annotations/480p/{seq}/{f:05d}.png")
    return DAVIS2017(root, "val")


def square_frames(n: int, h: int = 24, w: int = 32, ids=(1, 3)) -> list[np.ndarray]:
    out = []
    for f in range(n):
        a = np.zeros((h, w), np.uint8)
        a[2:10, 2 + f:10 + f] = ids[0]
        a[14:22, 16:28] = ids[1]
        a[0, :] = 255
        out.append(a)
    return out


def test_davis_sequences_become_videos(tmp_path):
    ds = make_davis(tmp_path, {"bear": square_frames(4), "cows": square_frames(3, ids=(2, 5))})
    dv = davis_videos(ds)
    assert len(dv) == 2 and dv.names == ["bear", "cows"] and [len(v) for v in dv] == [4, 3]
    v = dv[0]
    assert v.object_ids == [1, 3] and v.size == (24, 32) and v.meta["sequence"] == "bear"
    assert v.labels.dtype == torch.int64 and torch.equal(v.labels[3, 2:10, 5:13], torch.ones(8, 8, dtype=torch.int64))
    assert v.meta["void"].shape == (4, 24, 32) and bool(v.meta["void"][:, 0].all()) and int(v.labels[0, 0, 0]) == 0
    assert dv["cows"].object_ids == [2, 5]
    with pytest.raises(InputError, match="unknown sequence 'goat'; valid: bear, cows"): davis_videos(ds, sequences=["goat"])
    assert_names_argument(lambda: davis_videos([v]), "dataset")
    # propagation scores a DAVIS video at its own resolution, void pixels left out
    r = propagation_scores(lambda x: F.avg_pool2d(x, 4), dv, (24, 32))
    assert r.summary()["videos"] == 2 and r.summary()["objects"] == 4 and 0.5 < r.JF_mean <= 1


# ---------------------------------------------------------------- J and F

def davis_f_reference(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    "davis2017-evaluation's f_measure, written out with scipy's binary_dilation and skimage's disk."
    r = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    k = int(r)
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    disk = yy ** 2 + xx ** 2 <= r * r
    fb, gb = boundary_map(pred[None])[0], boundary_map(gt[None])[0]
    fd, gd = binary_dilation(fb, disk), binary_dilation(gb, disk)
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0: p, rc = 1, 0
    elif n_fg > 0 and n_gt == 0: p, rc = 0, 1
    elif n_fg == 0 and n_gt == 0: p, rc = 1, 1
    else: p, rc = (fb & gd).sum() / n_fg, (gb & fd).sum() / n_gt
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def test_boundary_f_matches_the_davis_definition_on_random_blobs():
    rng = np.random.default_rng(0)
    for shape, th in (((64, 64), 0.008), ((120, 90), 0.008), ((60, 80), 0.03), ((40, 40), 2)):
        blobs = F.avg_pool2d(torch.from_numpy(rng.random((4, 1, *shape))).float(), 9, 1, 4)[:, 0].numpy()
        a, b = blobs[:2] > 0.5, blobs[2:] > 0.5
        assert boundary_f(a, b, bound_th=th) == pytest.approx([davis_f_reference(x, y, th) for x, y in zip(a, b)])


def test_j_and_f_hand_cases():
    gt = torch.zeros(4, 64, 64, dtype=torch.int64)
    gt[:, 8:24, 8:24] = 1
    r = j_and_f(gt, gt)
    assert (r.J_mean, r.F_mean, r.JF_mean) == (1.0, 1.0, 1.0) and r.frames == [1, 2] and r.J.shape == (1, 4)
    disjoint = torch.zeros_like(gt); disjoint[:, 40:56, 40:56] = 1
    assert j_and_f(disjoint, gt).JF_mean == 0.0
    shift = torch.zeros_like(gt); shift[:, 9:25, 8:24] = 1
    r = j_and_f(shift, gt)
    assert r.F_mean == 1.0 and r.J_mean == pytest.approx(15 / 17)
    two = torch.zeros_like(gt); two[:, 9:25, 8:24] = 1                # object 2 is missed entirely in the prediction
    gt2 = gt.clone(); gt2[:, 40:50, 40:50] = 2
    r = j_and_f(two, gt2)
    assert r.object_ids == [1, 2] and r.J_objects.tolist() == pytest.approx([15 / 17, 0.0])
    assert r.summary() == pytest.approx(dict(J_mean=15 / 34, F_mean=0.5, JF_mean=(15 / 34 + 0.5) / 2, objects=2, frames=2))


def test_empty_frames_count_as_perfect_and_void_is_left_out():
    gt = torch.zeros(4, 32, 32, dtype=torch.int64); gt[0, 4:10, 4:10] = 1        # the object leaves after frame 0
    pred = torch.zeros_like(gt)
    r = j_and_f(pred, gt)
    assert r.J[0, 1:].tolist() == [1.0, 1.0, 1.0] and r.F[0, 1:].tolist() == [1.0, 1.0, 1.0]
    pred[2, 20:24, 20:24] = 1                                                     # a false positive in frame 2
    r = j_and_f(pred, gt)
    assert r.J[0, 2] == 0.0 and r.F[0, 2] == 0.0
    void = torch.zeros(4, 32, 32, dtype=torch.bool); void[2, 20:24, 20:24] = True
    assert j_and_f(pred, gt, void).JF_mean == 1.0
    assert region_j(np.zeros((1, 3, 3), bool), np.zeros((1, 3, 3), bool)).tolist() == [1.0]


def test_first_and_last_frames_are_not_scored():
    gt = torch.zeros(4, 16, 16, dtype=torch.int64); gt[:, 2:8, 2:8] = 1
    pred = gt.clone(); pred[0] = 0; pred[3] = 0
    assert j_and_f(pred, gt).JF_mean == 1.0
    assert j_and_f(pred, gt, exclude_last=False).JF_mean == pytest.approx(2 / 3)


def test_bad_metric_inputs():
    gt = torch.zeros(4, 16, 16, dtype=torch.int64); gt[:, 2:8, 2:8] = 1
    assert_names_argument(lambda: j_and_f(gt[:, :8], gt), "pred_labels")
    assert_names_argument(lambda: j_and_f(gt.float(), gt), "pred_labels")
    assert_names_argument(lambda: j_and_f(gt, gt[0]), "gt_labels")
    assert_names_argument(lambda: j_and_f(gt[:2], gt[:2]), "gt_labels")
    assert_names_argument(lambda: j_and_f(gt, gt, void=torch.zeros(4, 16)), "void")
    assert_names_argument(lambda: j_and_f(torch.zeros_like(gt), torch.zeros_like(gt)), "gt_labels")


# ---------------------------------------------------------------- propagation

def dino_propagation(features, first_labels, n_context, topk, temperature, radius):
    "DINO's eval_video_segmentation loop, literally: exp-affinities times a neighbourhood mask, top-k over all context positions, renormalised."
    T, C, h, w = features.shape
    feats = F.normalize(features, dim=1).flatten(2)                               # (T, C, N)
    ids = torch.unique(torch.cat([torch.zeros(1, dtype=torch.int64), first_labels.flatten()]))
    onehot = (first_labels[None] == ids[:, None, None]).float()
    segs = [F.adaptive_avg_pool2d(onehot[None].to(features.dtype), (h, w)).flatten(2)[0]]   # (K, N)
    mask = torch.zeros(h * w, h * w, dtype=features.dtype)
    for i in range(h):
        for j in range(w):
            for p in range(h):
                for q in range(w):
                    if radius is None or (abs(i - p) <= radius and abs(j - q) <= radius): mask[i * w + j, p * w + q] = 1
    queue, out = [], [first_labels]
    for t in range(1, T):
        ctx = [0] + queue
        aff = torch.exp(torch.bmm(feats[t].T[None].repeat(len(ctx), 1, 1), feats[ctx]) / temperature) * mask[None]
        aff = aff.transpose(2, 1).reshape(-1, h * w)                             # (M·N keys, N queries)
        tk, _ = torch.topk(aff, dim=0, k=topk)
        aff[aff < tk.min(0).values] = 0
        aff = aff / aff.sum(0, keepdim=True)
        seg = torch.cat([segs[c] for c in ctx], 1) @ aff                          # (K, N)
        segs.append(seg)
        queue = (queue + [t])[-n_context:]
        up = F.interpolate(seg.reshape(1, -1, h, w), size=first_labels.shape, mode="bilinear", align_corners=False)[0]
        out.append(ids[up.argmax(0)])
    return torch.stack(out), torch.stack(segs[1:]).reshape(T - 1, -1, h, w)


@pytest.mark.parametrize("grid,radius,n_context", [((5, 6), 1.5, 2), ((4, 4), None, 7)])
def test_propagation_matches_dinos_loop(grid, radius, n_context):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 8, *grid, generator=g, dtype=torch.float64)
    first = torch.zeros(20, 24, dtype=torch.int64); first[2:10, 3:12] = 2; first[12:18, 14:22] = 5
    ours, soft, ids = propagate_labels(feats, first, n_context=n_context, topk=3, temperature=0.1, radius=radius, chunk=7, return_soft=True)
    theirs, theirs_soft = dino_propagation(feats, first, n_context, 3, 0.1, radius)
    assert ids.tolist() == [0, 2, 5] and torch.allclose(soft[1:], theirs_soft, atol=1e-10) and torch.equal(ours, theirs)


def test_oracle_features_propagate_nearly_perfectly_random_ones_do_not(vids):
    oracle, noise = [], []
    for v in ObjectVideos(4, size=32, frames=6, seed=5):
        onehot = F.one_hot(v.labels, 4).permute(0, 3, 1, 2).float()             # the truth itself, at full resolution
        oracle.append(j_and_f(propagate_labels(onehot, v.labels[0]), v.labels).JF_mean)
        rnd = torch.randn(6, 16, 16, 16, generator=torch.Generator().manual_seed(1))
        noise.append(j_and_f(propagate_labels(rnd, v.labels[0]), v.labels).JF_mean)
    assert min(oracle) > 0.95 and max(noise) < 0.35 and np.mean(noise) < 0.2, (oracle, noise)


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (16, 16), (6, 10), (64, 64)])
def test_any_grid_gives_labels_at_the_frame_resolution(grid):
    feats = torch.randn(3, 5, *grid, generator=torch.Generator().manual_seed(0))
    first = torch.zeros(48, 80, dtype=torch.int64); first[10:30, 20:50] = 7
    out = propagate_labels(feats, first)
    assert out.shape == (3, 48, 80) and out.dtype == torch.int64 and torch.equal(out[0], first)
    assert set(out.unique().tolist()) <= {0, 7}


def test_a_2x_grid_of_the_same_features_propagates_as_well():
    v = ObjectVideos(2, size=64, frames=6, seed=3)[0]
    base = F.avg_pool2d(v.frames.float() / 255, 8)                             # an 8 × 8 grid
    a = j_and_f(propagate_labels(base, v.labels[0]), v.labels).JF_mean
    b = j_and_f(propagate_labels(F.interpolate(base, scale_factor=2, mode="bilinear"), v.labels[0]), v.labels).JF_mean
    assert b >= a - 0.1 and 0 <= a <= 1


def test_chunking_and_single_frame():
    feats = torch.randn(4, 6, 9, 7, generator=torch.Generator().manual_seed(2))
    first = torch.zeros(18, 14, dtype=torch.int64); first[3:9, 2:8] = 1
    assert torch.equal(propagate_labels(feats, first, chunk=5), propagate_labels(feats, first))
    assert torch.equal(propagate_labels(feats[:1], first), first[None])
    assert propagate_labels(feats, first, n_context=0).shape == (4, 18, 14)
    assert neighbourhood(9, 7, 1).sum(1).max() == 9


def test_bad_propagation_inputs():
    feats = torch.randn(3, 4, 5, 5)
    first = torch.zeros(10, 10, dtype=torch.int64)
    assert_names_argument(lambda: propagate_labels(feats[0], first), "features")
    assert_names_argument(lambda: propagate_labels(feats.long(), first), "features")
    assert_names_argument(lambda: propagate_labels(feats, first[0]), "first_labels")
    assert_names_argument(lambda: propagate_labels(feats, first - 1), "first_labels")
    assert_names_argument(lambda: propagate_labels(feats, first, n_context=-1), "n_context")
    assert_names_argument(lambda: propagate_labels(feats, first, topk=0), "topk")
    assert_names_argument(lambda: propagate_labels(feats, first, temperature=-1.0), "temperature")
    assert_names_argument(lambda: propagate_labels(feats, first, radius=-1), "radius")
    assert_names_argument(lambda: propagation_scores(None, [], 32), "feature_fn")
    assert_names_argument(lambda: propagation_scores(lambda x: x, [], 32), "videos")
    assert_names_argument(lambda: propagation_scores(lambda x: x, ObjectVideos(1, size=32, frames=3), 32, batch_size=0), "batch_size")
