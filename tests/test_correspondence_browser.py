"""workbench.viz.browsers.correspondence driven through its widgets: a random object ViT (patch 8, 128 channels) with
plain, bilinear and LiFT features over exact warps of object-world images. Every control changes the picture, every
match is `keypoint_transfer`'s on the same features (and `feature_pck`'s error), features are computed once per image,
size and function, and bad inputs are one line."""
import re

import pytest
import torch

from workbench.core import InputError
from workbench.data.worlds import ObjectWorld
from workbench.methods.features import keypoint_transfer, patch_index, pck_size, warp_pairs
from workbench.methods.lift import bilinear_features, feature_pck, lift_features, new_lift, plain_features
from workbench.models.vits import input_config, new_object_vit
from workbench.viz.browsers.base import WIDE_LABEL
from workbench.viz.browsers.correspondence import CorrespondenceBrowser

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def setup():
    world = ObjectWorld(size=64, seed=2)
    pairs = warp_pairs([world[i] for i in range(3)], seed=1, n_keypoints=5)
    vit = new_object_vit(0, depth=2).eval()
    lift = new_lift("small", residual=False).eval()       # no residual: unlike bilinear features before training
    feats = {"plain": plain_features(vit), "bilinear x2": bilinear_features(vit, 2), "LiFT": lift_features(vit, lift, 1)}
    cfg = input_config(vit)
    return pairs, feats, cfg


def browser(setup, **kw):
    pairs, feats, cfg = setup
    return CorrespondenceBrowser(kw.pop("features", feats), pairs, kw.pop("sizes", [32, 64]), cfg["mean"], cfg["std"], **kw)


def reported_matches(info: str) -> dict[str, tuple[float, float]]:
    "name → the match (x, y) the info panel reports."
    return {n: (float(x), float(y)) for n, x, y in re.findall(r"<b>([^<]+)</b></td><td>grid \d+×\d+ · match \(([-\d.]+), ([-\d.]+)\)", info)}


def test_every_control_changes_the_image(setup):
    b = browser(setup, patch_size=8)
    assert b.image.value[:4] == PNG and b.keypoint.value == 0 and not b.show_gt.disabled
    assert (b.image.layout.align_self, b.image.layout.width) == ("flex-start", None) and b.size.style.description_width == WIDE_LABEL["description_width"]
    steps = [("keypoint", 2), ("x", 20), ("y", 40), ("size", 64), ("show_gt", False), ("show_gt", True), ("target", 0),
             ("source", 3), ("target", 2), ("keypoint", 1)]
    for attr, value in steps:
        before = bytes(b.image.value)
        getattr(b, attr).value = value
        assert b.image.value[:4] == PNG and bytes(b.image.value) != before, attr
    assert b.keypoint.value == 1 and b.source.value == 3 and "pair 1 · target" in b.info.value


def test_matches_are_keypoint_transfer_and_feature_pck(setup):
    pairs, feats, cfg = setup
    b = browser(setup)
    for size, which in ((32, (0, 1)), (64, (0,))):
        b.size.value = size
        for p in which:
            pair = pairs[p]
            b.source.value, b.target.value = 2 * p, 2 * p + 1
            ref = {n: feature_pck(fn, [pair], size, cfg["mean"], cfg["std"]).errors[0] for n, fn in feats.items()}
            for k, kp in enumerate(pair.src.meta["keypoints"]):
                b.keypoint.value = k
                shown = reported_matches(b.info.value)
                assert list(shown) == list(feats)
                for m in b.matches():
                    fs, ft = b.features_of(2 * p, size, m.name), b.features_of(2 * p + 1, size, m.name)
                    expected = keypoint_transfer(fs, ft, kp[None], pair.src.size, pair.trg.size)[0]
                    assert torch.equal(m.match, expected), (m.name, size, p, k)
                    assert shown[m.name] == pytest.approx(tuple(expected.tolist()), abs=0.05)
                    assert int(m.similarity.flatten().argmax()) == int(patch_index(m.match, pair.trg.size, m.grid)[0])
                    assert m.score == pytest.approx(float(m.similarity.max()))
                    assert torch.equal(m.gt, pair.trg.meta["keypoints"][k].double())
                    # feature_pck runs source and target in one batch: the same prediction, its error / the object's size
                    assert m.error / pck_size(pair.trg.boxes[0]) == pytest.approx(float(ref[m.name][k]), abs=1e-4), (m.name, k)


def test_features_are_computed_once_per_image_size_and_function(setup):
    pairs, feats, cfg = setup
    calls = []
    def counted(name):
        def fn(x):
            calls.append((name, tuple(x.shape)))
            return feats[name](x)
        return fn
    b = browser(setup, features={n: counted(n) for n in feats})
    assert sorted(calls) == sorted((n, (1, 3, 32, 32)) for n in feats for _ in range(2))
    calls.clear()
    for k in range(3): b.keypoint.value = k
    b.x.value, b.y.value = 10, 50
    assert b.keypoint.value == "custom" and calls == []
    b.size.value = 64
    assert len(calls) == 6 and all(s == (1, 3, 64, 64) for _, s in calls)
    b.size.value = 32; b.target.value = 0
    assert len(calls) == 6


def test_ground_truth(setup):
    pairs = setup[0]
    b = browser(setup)
    pair = pairs[0]
    b.keypoint.value = 3
    x, y = pair.src.meta["keypoints"][3].floor().long().tolist()
    assert (b.x.value, b.y.value) == (x, y)
    b.keypoint.value = "custom"                              # the keypoint's pixel, mapped through the warp: its true point
    assert torch.allclose(b.ground_truth(), pair.trg.meta["keypoints"][3].double(), atol=1e-4)
    b.target.value = 0
    assert torch.equal(b.ground_truth(), b.point)
    b.source.value, b.target.value = 1, 0                    # backwards through the inverse warp
    b.x.value, b.y.value = 31, 31
    back = b.ground_truth()
    m = torch.tensor(pair.meta["warp"], dtype=torch.float64)
    assert torch.allclose((m @ torch.cat([back, torch.ones(1, dtype=torch.float64)]))[:2], b.point, atol=1e-6)
    b.target.value = 5
    assert b.ground_truth() is None and "images of different pairs" in b.info.value and b.show_gt.disabled


def assert_one_line(call, *words):
    with pytest.raises(InputError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_inputs_are_one_line(setup):
    pairs, feats, cfg = setup
    assert_one_line(lambda: CorrespondenceBrowser({}, pairs, [32]), "no feature functions")
    assert_one_line(lambda: CorrespondenceBrowser({"plain": feats["plain"], "x": "vit"}, pairs, [32]), "features['x']", "str")
    assert_one_line(lambda: CorrespondenceBrowser(feats, [], [32]), "pairs: none given")
    assert_one_line(lambda: CorrespondenceBrowser(feats, [pairs[0].src], [32]), "pairs[0]", "SamplePair")
    assert_one_line(lambda: CorrespondenceBrowser(feats, pairs, [32, 36], patch_size=8), "36 px", "patch size 8")
    assert_one_line(lambda: CorrespondenceBrowser(feats, pairs, [36]), "features['plain'] at 36 px", "multiple of the patch size")
    assert_one_line(lambda: CorrespondenceBrowser(feats, pairs, [0]), "sizes")
    assert_one_line(lambda: CorrespondenceBrowser({"pooled": lambda x: x.mean((2, 3))}, pairs, [32]), "features['pooled']", "(1, C, h, w)")
    b = CorrespondenceBrowser({"plain": feats["plain"]}, pairs[:1], [32, 36])    # a size it cannot take: a red line
    b.size.value = 36
    assert "is not a positive multiple of the patch size" in b.info.value and b.image.value == b""
    b.size.value = 32
    assert b.image.value[:4] == PNG and "grid 4×4" in b.info.value
