"""workbench.methods.tokencut: TokenCut finds a synthetic block exactly (small, up to half the grid; over half it takes
the smaller side, as published), maps grid cells to pixels on square, non-square and 2× grids, keeps the seed's
4-connected component, matches scipy's generalized eigenvector, is deterministic, runs batched through a feature
function on images of several sizes (boxes in their own pixels) and end to end with a tiny random ViT on object-world
samples, scores CorLoc, and names the bad argument."""
import numpy as np
import pytest
import torch
from scipy.linalg import eigh

from conftest import assert_names_argument
from workbench.core import torch_generator
from workbench.data.samples import Sample
from workbench.data.worlds import ObjectWorld
from workbench.methods.lift import bilinear_features, plain_features
from workbench.methods.tokencut import (DiscoveryResult, TokenCutResult, discovery_scores, fiedler_vector, grid_box_pixels,
                                        tokencut, tokencut_boxes, tokencut_graph, tokencut_images)
from workbench.models.vits import new_object_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def block_grid(h, w, rows, cols, channels=8, noise=0.05, seed=0):
    "Features (C, h, w): basis vector e1 on the block rows × cols (slices), e0 elsewhere, plus Gaussian noise."
    f = torch.zeros(channels, h, w)
    f[0] = 1
    f[0, rows, cols] = 0
    f[1, rows, cols] = 1
    return f + noise * torch.randn(channels, h, w, generator=torch_generator(seed))


def block_mask(h, w, rows, cols):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows, cols] = True
    return m


@pytest.mark.parametrize("rows, cols, box", [
    (slice(2, 4), slice(3, 6), [24., 16., 48., 32.]),     # 6 of 64 positions
    (slice(1, 6), slice(1, 7), [8., 8., 56., 48.]),       # 30 of 64: large, still under half
    (slice(0, 1), slice(0, 1), [0., 0., 8., 8.]),         # one corner cell
    (slice(4, 8), slice(0, 7), [0., 32., 56., 64.]),      # 28 of 64, touching two borders
])
def test_finds_a_block_exactly(rows, cols, box):
    r = tokencut(block_grid(8, 8, rows, cols), 64)
    assert isinstance(r, TokenCutResult)
    assert r.box.dtype == torch.float32 and r.box.tolist() == box
    assert torch.equal(r.mask, block_mask(8, 8, rows, cols)) and torch.equal(r.partition, r.mask)
    assert r.mask[r.seed]
    assert (r.eigenvector[r.mask] > r.eigenvector.mean()).all()       # oriented: large on the foreground


@pytest.mark.parametrize("seed", range(4))
def test_the_noise_does_not_change_the_answer(seed):
    assert tokencut(block_grid(8, 8, slice(1, 6), slice(1, 7), seed=seed), 64).box.tolist() == [8., 8., 56., 48.]


def test_over_half_the_grid_the_smaller_side_is_taken():
    "The seed (largest |x|) lies in the smaller side: TokenCut's rule, without MaskCut's corner check."
    r = tokencut(block_grid(8, 8, slice(0, 7), slice(0, 8)), 64)
    assert r.box.tolist() == [0., 56., 64., 64.]
    assert torch.equal(r.mask, ~block_mask(8, 8, slice(0, 7), slice(0, 8)))


def test_grid_cells_map_to_pixels():
    assert tokencut(block_grid(4, 6, slice(1, 3), slice(2, 5)), (40, 90)).box.tolist() == [30., 10., 75., 30.]  # 10 × 15 px cells
    assert tokencut(block_grid(6, 4, slice(0, 2), slice(1, 3)), (60, 20)).box.tolist() == [5., 0., 15., 20.]   # 10 × 5 px cells
    plain = tokencut(block_grid(8, 8, slice(2, 4), slice(3, 6)), 64)
    fine = tokencut(block_grid(16, 16, slice(4, 8), slice(6, 12)), 64)          # the same object on a 2× grid
    assert torch.equal(plain.box, fine.box) and fine.mask.shape == (16, 16)
    assert tokencut(block_grid(3, 3, slice(1, 2), slice(1, 2)), (10, 10)).box.tolist() == pytest.approx([10 / 3, 10 / 3, 20 / 3, 20 / 3])
    assert grid_box_pixels((0, 1), (2, 2), (4, 8), (32, 64)).tolist() == [16., 0., 24., 16.]


def test_only_the_seed_component_four_connected():
    f = block_grid(8, 8, slice(1, 3), slice(1, 3))
    f[:, 3:5, 3:5] = block_grid(8, 8, slice(3, 5), slice(3, 5), seed=1)[:, 3:5, 3:5]   # a second block, touching at a corner
    r = tokencut(f, 64)
    assert int(r.partition.sum()) == 8 and int(r.mask.sum()) == 4
    assert r.box.tolist() in ([8., 8., 24., 24.], [24., 24., 40., 40.])


def test_fiedler_vector_is_scipys_generalized_eigenvector():
    G = tokencut_graph(torch.randn(6, 5, 7, generator=torch_generator(3)), tau=0.0)
    assert G.shape == (35, 35) and set(np.unique(G)) <= {1.0, 1e-5} and (G == G.T).all() and (np.diag(G) == 1).all()
    D = np.diag(G.sum(1))
    ref = eigh(D - G, D, subset_by_index=[1, 1])[1][:, 0]
    x = fiedler_vector(G)
    assert x @ D @ x == pytest.approx(1.0)
    np.testing.assert_allclose(x, np.sign(x @ D @ ref) * ref, atol=1e-8)


def test_the_graph_thresholds_cosine_similarity():
    f = torch.tensor([[1., 0., 1.], [0., 1., 1.]])[:, None, :]           # three positions: e0, e1 and their sum
    G = tokencut_graph(f, tau=0.2, eps=1e-3)
    cos = 1 / np.sqrt(2)
    assert G.tolist() == [[1, 1e-3, 1], [1e-3, 1, 1], [1, 1, 1]]          # cos(e0, e1) = 0; cos(e0, e0 + e1) = 0.71 > 0.2
    assert tokencut_graph(f, tau=cos + 0.01).tolist() == [[1, 1e-5, 1e-5], [1e-5, 1, 1e-5], [1e-5, 1e-5, 1]]


def test_deterministic_and_numpy_input():
    f = torch.randn(16, 6, 6, generator=torch_generator(1))
    a, b = tokencut(f, 48), tokencut(f.numpy(), 48)
    assert torch.equal(a.box, b.box) and torch.equal(a.mask, b.mask) and torch.equal(a.eigenvector, b.eigenvector) and a.seed == b.seed


def _fixed(grid):
    return lambda x: grid.expand(len(x), -1, -1, -1)


def test_batched_boxes_are_in_each_images_own_pixels():
    fn = _fixed(block_grid(8, 8, slice(2, 4), slice(3, 6)))
    imgs = [torch.zeros(3, 64, 64, dtype=torch.uint8), torch.zeros(3, 32, 48, dtype=torch.uint8), torch.zeros(3, 16, 16, dtype=torch.uint8)]
    boxes = tokencut_boxes(fn, imgs, size=32, batch_size=2)
    assert boxes.tolist() == [[24., 16., 48., 32.], [18., 8., 36., 16.], [6., 4., 12., 8.]]
    same = tokencut_boxes(fn, torch.zeros(5, 3, 40, 40, dtype=torch.uint8), size=None, batch_size=3)   # a stack, native size
    assert same.shape == (5, 4) and (same == torch.tensor([15., 10., 30., 20.])).all()


def test_the_feature_function_sees_resized_normalised_images():
    seen = []
    def fn(x):
        seen.append((tuple(x.shape), x.dtype, float(x.mean())))
        return torch.randn(len(x), 4, 2, 3)
    imgs = [torch.full((3, 20, 30), 255, dtype=torch.uint8)] * 3
    tokencut_images(fn, imgs, size=(16, 24), mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=2)
    assert [s[0] for s in seen] == [(2, 3, 16, 24), (1, 3, 16, 24)]
    assert all(d == torch.float32 and m == pytest.approx(2.0) for _, d, m in seen)     # (1 - 0.5) / 0.25


@pytest.fixture(scope="module")
def tiny_vit():
    return new_object_vit(0, img_size=32, embed_dim=32, depth=2, num_heads=2).eval()


@pytest.fixture(scope="module")
def samples():
    world = ObjectWorld(size=64, seed=0)
    return [world[i] for i in range(4)]


@pytest.mark.parametrize("kind, size, cells", [("plain", 32, 4), ("plain", 48, 6), ("bilinear", 32, 8)])
def test_end_to_end_with_a_random_vit(tiny_vit, samples, kind, size, cells):
    fn = plain_features(tiny_vit) if kind == "plain" else bilinear_features(tiny_vit, 2)
    r = discovery_scores(fn, samples, size=size, batch_size=3, name=kind)
    assert isinstance(r, DiscoveryResult) and r.name == kind
    assert r.boxes.shape == (4, 4) and r.ious.shape == (4,) and len(r.results) == 4
    assert all(res.mask.shape == (cells, cells) and res.eigenvector.shape == (cells, cells) for res in r.results)
    assert ((r.boxes[:, :2] >= 0) & (r.boxes[:, 2:] <= 64) & (r.boxes[:, 2:] > r.boxes[:, :2])).all()
    assert ((r.ious >= 0) & (r.ious <= 1)).all() and 0 <= r.corloc <= 1
    s = r.summary()
    assert s["n_images"] == 4 and s["corloc"] == r.corloc and s["features"] == kind
    again = discovery_scores(fn, samples, size=size, batch_size=4, name=kind)
    assert torch.equal(again.boxes, r.boxes)                           # batching does not change the answer


def _boxed(x0, y0, x1, y1):
    return Sample(torch.zeros(3, 64, 64, dtype=torch.uint8), torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
                  torch.zeros(1, dtype=torch.int64))


def test_discovery_corloc_against_hand_made_boxes():
    "The features always show the block at rows 2-3, cols 3-5 (box 24, 16, 48, 32): IoU 1, exactly 0.5, and 0 with the three GTs."
    fn = _fixed(block_grid(8, 8, slice(2, 4), slice(3, 6)))
    toys = [_boxed(24, 16, 48, 32), _boxed(24, 16, 48, 24), _boxed(0, 40, 8, 48)]
    r = discovery_scores(fn, toys, size=64)
    assert r.ious.tolist() == [1.0, 0.5, 0.0] and r.hits.tolist() == [True, False, False]
    assert r.corloc == pytest.approx(1 / 3)
    assert discovery_scores(fn, toys, size=64, iou=0.4).corloc == pytest.approx(2 / 3)


@pytest.mark.parametrize("call, name", [
    (lambda: tokencut(torch.randn(1, 4, 3, 3), 32), "features"),                # a batch
    (lambda: tokencut(torch.randn(4, 3), 32), "features"),
    (lambda: tokencut(torch.zeros(4, 3, 3, dtype=torch.int64), 32), "features"),
    (lambda: tokencut(torch.randn(4, 1, 1), 32), "features"),                   # one position
    (lambda: tokencut(torch.full((4, 2, 2), float("nan")), 32), "features"),
    (lambda: tokencut(torch.randn(4, 2, 2), (32, 0)), "image_size"),
    (lambda: tokencut(torch.randn(4, 2, 2), (32, 32, 3)), "image_size"),
    (lambda: tokencut(torch.randn(4, 2, 2), 32, tau=1.0), "tau"),
    (lambda: tokencut(torch.randn(4, 2, 2), 32, eps=0.0), "eps"),
    (lambda: fiedler_vector(np.zeros((3, 3))), "graph"),
    (lambda: tokencut_boxes(_fixed(torch.randn(4, 2, 2)), torch.zeros(3, 32, 32)), "images"),           # one image, no batch axis
    (lambda: tokencut_boxes(_fixed(torch.randn(4, 2, 2)), []), "images"),
    (lambda: tokencut_boxes(_fixed(torch.randn(4, 2, 2)), [torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)]), "images[1]"),
    (lambda: tokencut_boxes(lambda x: x[0], [torch.zeros(3, 8, 8)] * 2), "feature_fn"),                 # not (B, C, h, w)
    (lambda: tokencut_boxes(lambda x: torch.randn(1, 4, 2, 2), [torch.zeros(3, 8, 8)] * 2), "feature_fn"),  # 1 grid for 2 images
    (lambda: tokencut_boxes("vit", [torch.zeros(3, 8, 8)]), "feature_fn"),
    (lambda: tokencut_boxes(_fixed(torch.randn(4, 2, 2)), [torch.zeros(3, 8, 8)], batch_size=0), "batch_size"),
    (lambda: discovery_scores(_fixed(torch.randn(4, 2, 2)), [torch.zeros(3, 8, 8, dtype=torch.uint8)]), "samples[0]"),
    (lambda: discovery_scores(_fixed(torch.randn(4, 2, 2)), []), "samples"),
    (lambda: discovery_scores(_fixed(torch.randn(4, 2, 2)), [_boxed(0, 0, 8, 8)], iou=2), "iou"),
])
def test_bad_input_names_the_argument(call, name):
    assert_names_argument(call, name)
