"""workbench.methods.directions: the deformator kinds, training (deterministic, the generator frozen, the direction told
apart above chance), shift masks on a generator with a known answer, the three filters, synthetic pairs (resampling,
rejection), the label-free and the labelled choice of the direction, the encoder, checkpoints, and bad inputs."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_names_argument
from workbench.core import InputError, torch_generator
from workbench.methods.directions import (DEFORMATOR_KINDS, DirectionsConfig, MaskFilters, Reconstructor, SyntheticPairs,
                                          apply_filters, best_dev, dev_scores, direction_grid, direction_scores,
                                          embedding_latents, histogram_peaks, largest_components, load_directions,
                                          load_encoder, make_deformator, pick_direction, random_shifts, save_directions,
                                          save_encoder, shift_masks, synthetic_pairs, to_gray, train_directions, train_encoder)
from workbench.methods.distill import MaskSet
from workbench.models.gan import DCGANGenerator
from workbench.models.generators import TorchGenerator, to_uint8
from workbench.models.registry import load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


class Scene(nn.Module):
    """z (B, 4) → (B, 3, 16, 16) = tanh(0.5·Σ z_j P_j) with an object (the centre square, a quarter of the image):
    P_0 darkens the background and lightens the object (the background direction), P_1 a fixed random pattern (noise),
    P_2 everything (brightness), P_3 the left half."""
    def __init__(self):
        super().__init__()
        fg = torch.zeros(SIZE, SIZE); fg[4:12, 4:12] = 1
        left = torch.zeros(SIZE, SIZE); left[:, :SIZE // 2] = 1
        noise = torch.randn(SIZE, SIZE, generator=torch_generator(0))
        self.register_buffer("fg", fg.bool())
        self.register_buffer("left", left.bool())
        self.register_buffer("patterns", torch.stack([0.3 * fg - 0.6 * (1 - fg), 0.3 * noise, 0.2 * torch.ones(SIZE, SIZE), 0.3 * left]))
        self.gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, z):
        return torch.tanh(self.gain * torch.einsum("bj,jhw->bhw", z, self.patterns))[:, None].expand(-1, 3, -1, -1)

    def invert(self, x):
        y = torch.atanh(x[:, 0].clamp(-0.999, 0.999)).flatten(1) / self.gain.detach()
        return torch.linalg.lstsq(self.patterns.flatten(1).T, y.T).solution.T


class Quadrants(nn.Module):
    "z (B, 4) → (B, 3, 16, 16): coordinate j brightens quadrant j, so the four axes are easy to tell apart."
    def __init__(self):
        super().__init__()
        q = torch.zeros(4, SIZE, SIZE)
        q[0, :8, :8] = q[1, :8, 8:] = q[2, 8:, :8] = q[3, 8:, 8:] = 1
        self.register_buffer("patterns", q)
        self.gain = nn.Parameter(torch.tensor(0.3))

    def forward(self, z):
        return torch.tanh(self.gain * torch.einsum("bj,jhw->bhw", z, self.patterns))[:, None].expand(-1, 3, -1, -1)


@pytest.fixture
def scene():
    return TorchGenerator(Scene(), z_dim=4, layers=[])


def tiny_dcgan():
    return DCGANGenerator(32, z_dim=8, channel_base=64, channel_max=16)


# ----------------------------------------------------------------------------------------------------- deformators
def test_orthogonal_directions_are_orthonormal_before_and_after_training_steps():
    d = make_deformator("orthogonal", 7, seed=1)
    opt = torch.optim.Adam(d.parameters(), lr=0.1)
    for _ in range(3):
        d(torch.randn(4, 7))[:, :2].sum().backward(); opt.step(); opt.zero_grad()
    dirs = d.directions()
    assert dirs.shape == (7, 7)
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(7), atol=1e-5, rtol=0)
    assert not torch.allclose(dirs, torch.eye(7), atol=1e-2)        # it moved


def test_identity_deformator_is_fixed_orthonormal_and_has_nothing_to_train():
    d = make_deformator("identity", 6, k=3, seed=2)
    assert sum(p.numel() for p in d.parameters()) == 0 and "fixed" in d.state_dict()
    torch.testing.assert_close(d.directions() @ d.directions().T, torch.eye(3), atol=1e-5, rtol=0)
    assert not torch.equal(d.directions(), make_deformator("identity", 6, k=3, seed=3).directions())


def test_projective_keeps_the_norm_and_linear_does_not():
    p, l = make_deformator("projective", 5, k=9, seed=0), make_deformator("linear", 5, k=9, seed=0)
    s = torch.randn(6, 9, generator=torch_generator(0))
    torch.testing.assert_close(p(s).norm(dim=1), s.norm(dim=1))
    assert not torch.allclose(l(s).norm(dim=1), s.norm(dim=1), rtol=1e-2)
    torch.testing.assert_close(l.directions(), l.weight.T.detach())    # row j: the image of the one-hot e_j


def test_reconstructor_is_resnet18_on_six_channels_by_default():
    r = Reconstructor(3)
    assert r.net.conv1.in_channels == 6 and r.net.fc.out_features == 4
    logits, shift = r(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3) and shift.shape == (2,)


# ------------------------------------------------------------------------------------------------------- training
def test_training_is_deterministic_per_seed_and_leaves_the_generator_alone():
    G = tiny_dcgan()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    cfg = DirectionsConfig.profile("smoke", steps=12, batch_size=4)
    a, b = train_directions(G, cfg), train_directions(G, cfg)
    c = train_directions(G, cfg.replace(seed=1))
    for k, v in a.model.state_dict().items(): assert torch.equal(v, b.model.state_dict()[k]), k
    for k, v in a.parts["reconstructor"].state_dict().items(): assert torch.equal(v, b.parts["reconstructor"].state_dict()[k]), k
    assert not torch.equal(a.model.skew, c.model.skew)
    assert a.history["loss"] == b.history["loss"] and {"loss", "accuracy", "shift_error"} <= set(a.history.keys())
    for k, v in G.state_dict().items(): assert torch.equal(v, before[k]), k
    assert all(p.requires_grad and p.grad is None for p in G.parameters())
    assert not torch.allclose(a.model.directions(), make_deformator("orthogonal", 8, seed=0).directions())   # gradients reached it


def test_random_shifts_are_uniform_in_scale_and_pushed_away_from_zero_keeping_their_sign():
    idx, eps = random_shifts(2000, 5, 6.0, 0.5, torch_generator(0))
    g = torch_generator(0)
    raw_idx, raw = torch.randint(5, (2000,), generator=g), 6.0 * (2 * torch.rand(2000, generator=g) - 1)
    small = raw.abs() < 0.5
    assert torch.equal(idx, raw_idx) and set(idx.tolist()) == set(range(5)) and small.any()
    assert torch.equal(eps[~small], raw[~small]) and torch.equal(eps[small], 0.5 * torch.where(raw[small] < 0, -1.0, 1.0))
    assert eps.abs().min() >= 0.5 and eps.abs().max() <= 6.0


def test_the_reconstructor_tells_distinguishable_directions_apart():
    G = TorchGenerator(Quadrants(), z_dim=4, layers=[])
    res = train_directions(G, DirectionsConfig.profile("smoke", steps=40, batch_size=16, lr=3e-3, shift_scale=3.0))
    acc = res.history["accuracy"]
    assert np.mean(acc[-10:]) > 0.6 > 0.25 == res.info["chance"], acc
    assert np.mean(res.history["loss"][-10:]) < np.mean(res.history["loss"][:5])


def test_identity_deformator_trains_the_reconstructor_only():
    res = train_directions(tiny_dcgan(), DirectionsConfig.profile("smoke", deformator="identity", k=3, steps=2, batch_size=4))
    assert res.model.k == 3 and res.info["params"] == 0 and len(res.history) == 2


# ------------------------------------------------------------------------------------------------ grids and masks
def test_direction_grid_layout(scene):
    z = torch.randn(3, 4, generator=torch_generator(0))
    grid = direction_grid(scene, torch.eye(4), z, ks=[0, 3], eps=1.5)
    assert grid.shape == (2, 3, 3, 3, SIZE, SIZE) and grid.dtype == torch.uint8
    torch.testing.assert_close(grid[0, 1], to_uint8(scene(z)))
    torch.testing.assert_close(grid[1, 2], to_uint8(scene(z + 1.5 * torch.eye(4)[3])))
    torch.testing.assert_close(grid[1, 0], to_uint8(scene(z - 1.5 * torch.eye(4)[3])))


def test_to_gray_weights():
    x = torch.zeros(1, 3, 2, 2); x[0, 0, 0, 0] = 1; x[0, 1, 0, 1] = 1; x[0, 2, 1, 0] = 1; x[0, :, 1, 1] = -1
    torch.testing.assert_close(to_gray(x)[0], torch.tensor([[0.2989, 0.5870], [0.1140, -(0.2989 + 0.5870 + 0.1140)]]))
    u = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    torch.testing.assert_close(to_gray(u), torch.tensor([[[0.2989 * 10 + 0.5870 * 20 + 0.1140 * 30]]]))


def test_compare_mask_is_exactly_what_the_shift_brightens(scene):
    z = torch.randn(5, 4, generator=torch_generator(3))
    images, shifted, masks = shift_masks(scene, torch.eye(4)[3], z, r=5.0)
    assert images.shape == shifted.shape == (5, 3, SIZE, SIZE) and masks.dtype == torch.bool
    assert torch.equal(masks, scene.module.left.expand(5, -1, -1))
    assert torch.equal(shift_masks(scene, torch.eye(4)[3], z, sign=-1)[2], torch.zeros(5, SIZE, SIZE, dtype=torch.bool))
    assert torch.equal(shift_masks(scene, torch.eye(4)[0], z)[2], scene.module.fg.expand(5, -1, -1))


def test_mean_variant_thresholds_the_shifted_image_at_its_mean(scene):
    z = torch.randn(4, 4, generator=torch_generator(4))
    _, shifted, masks = shift_masks(scene, torch.eye(4)[1], z, variant="mean")
    g = to_gray(shifted)
    assert torch.equal(masks, g > g.mean(dim=(1, 2), keepdim=True))


# ------------------------------------------------------------------------------------------------------- filters
def test_components_keep_those_above_the_ratio_of_the_largest():
    m = torch.zeros(2, 12, 12, dtype=torch.bool)
    m[0, :5, :5] = True          # 25 px
    m[0, 7:9, 7:10] = True       # 6 px: 0.24 of the largest
    m[0, 11, 0] = True           # 1 px
    m[1, 0, 0] = m[1, 1, 1] = True   # diagonal neighbours: two components under 4-connectivity
    out = largest_components(m, 0.2)
    assert out[0].sum() == 31 and not out[0, 11, 0]
    assert largest_components(m, 0.25)[0].sum() == 25
    assert torch.equal(largest_components(m, 0.5)[1], m[1])   # both 1 px components equal the largest
    assert not largest_components(torch.zeros(1, 4, 4, dtype=torch.bool)).any()


def test_size_filter_keeps_up_to_half_and_rejects_empty_masks():
    shifted = torch.zeros(3, 3, 10, 10)
    m = torch.zeros(3, 10, 10, dtype=torch.bool)
    m[0, :5] = True; m[1, :5] = True; m[1, 5, 0] = True   # 50 % and 51 % (the extra pixel touches the block)
    _, v = apply_filters(shifted, m, MaskFilters(histogram=False))
    assert v["size"].tolist() == [True, False, False] and v["histogram"].all() and torch.equal(v["keep"], v["size"])
    _, v = apply_filters(shifted, m, MaskFilters(histogram=False, max_size=0.6))
    assert v["size"].tolist() == [True, True, False]


def test_histogram_peaks_bimodal_versus_unimodal():
    g = torch.Generator().manual_seed(0)
    two = torch.where(torch.rand(1, 20, 20, generator=g) < 0.4, -0.8, 0.6) + 0.02 * torch.randn(1, 20, 20, generator=g)
    one = 0.1 * torch.randn(1, 20, 20, generator=g)
    assert histogram_peaks(torch.cat([two, one])).tolist() == [2, 1]
    edges = torch.full((1, 4, 4), -1.0); edges[0, :2] = 1.0      # the two end bins: peaks at the ends count
    assert histogram_peaks(edges).tolist() == [2]
    # through apply_filters, on images (gray of equal channels is 0.9999 of the value)
    imgs = torch.cat([two, one])[:, None].expand(-1, 3, -1, -1)
    _, v = apply_filters(imgs, torch.ones(2, 20, 20, dtype=torch.bool), MaskFilters(size=False))
    assert v["histogram"].tolist() == [True, False]


def test_components_filter_changes_the_masks_only_when_on():
    m = torch.zeros(1, 10, 10, dtype=torch.bool); m[0, :4, :4] = True; m[0, 9, 9] = True
    out, _ = apply_filters(torch.zeros(1, 3, 10, 10), m, MaskFilters(histogram=False))
    assert out.sum() == 16
    out, _ = apply_filters(torch.zeros(1, 3, 10, 10), m, MaskFilters(histogram=False, components=False))
    assert torch.equal(out, m)


# ------------------------------------------------------------------------------------------------ synthetic pairs
def test_synthetic_pairs_resample_until_full(scene):
    pairs = synthetic_pairs(scene, torch.eye(4)[1], n=10, sign=-1, batch_size=8, seed=0)
    assert isinstance(pairs, SyntheticPairs) and len(pairs) == 10
    assert pairs.drawn > pairs.kept >= 10 and pairs.drawn % 8 == 0
    assert not pairs.pool_verdicts["keep"].all() and len(pairs.pool_images) == pairs.drawn
    assert pairs.images.dtype == pairs.shifted.dtype == torch.uint8 and pairs.masks.dtype == pairs.raw_masks.dtype == torch.bool
    keep = pairs.pool_verdicts["keep"]
    assert pairs.ids == keep.nonzero().flatten()[:10].tolist()               # the first kept draws, in order
    assert torch.equal(pairs.images, pairs.pool_images[keep][:10])
    ms = pairs.mask_set()
    assert isinstance(ms, MaskSet) and len(ms) == 10 and torch.equal(ms.masks, pairs.masks)
    again = synthetic_pairs(scene, torch.eye(4)[1], n=10, sign=-1, batch_size=8, seed=0)
    assert torch.equal(again.images, pairs.images) and again.ids == pairs.ids


def test_synthetic_pairs_with_latents_function(scene):
    calls = []
    def latents(batch, generator):
        calls.append(batch)
        return torch.randn(batch, 4, generator=generator)
    pairs = synthetic_pairs(scene, torch.eye(4)[0], n=5, batch_size=3, latents=latents)
    assert calls == [3, 3] and len(pairs) == 5 and torch.equal(pairs.masks, scene.module.fg.expand(5, -1, -1))


def test_synthetic_pairs_raise_when_everything_is_rejected(scene):
    with pytest.raises(InputError) as e:
        synthetic_pairs(scene, torch.eye(4)[2], n=2, batch_size=4)            # brightness: the whole image, always
    msg = str(e.value)
    assert msg.startswith("filters:") and "\n" not in msg and "40 candidates" in msg and "size 0%" in msg


def test_synthetic_pairs_return_what_passed_when_short(scene):
    pairs = synthetic_pairs(scene, torch.eye(4)[1], n=50, sign=-1, batch_size=8, max_draws=16)
    assert 0 < len(pairs) < 50 and pairs.drawn == 16 and len(pairs) == pairs.kept


# ------------------------------------------------------------------------------------------- choosing a direction
def test_direction_scores_pick_the_background_direction_and_its_sign(scene):
    dirs = torch.eye(4)[[1, 2, 0, 3]]          # noise, brightness, background, left half
    scores = direction_scores(scene, dirs, n=32, seed=1)
    assert [(s["index"], s["sign"]) for s in scores] == [(k, s) for k in range(4) for s in (1, -1)]
    best = pick_direction(scores)
    assert (best["index"], best["sign"]) == (2, 1)
    by = {(s["index"], s["sign"]): s for s in scores}
    assert by[(2, -1)]["score"] == 0 and by[(0, 1)]["bimodality"] < 0.8 < 0.9 < best["bimodality"]   # noise: not two groups
    assert by[(1, 1)]["score"] == 0 and by[(1, 1)]["mask_fraction"] == 1          # brightness: everything brighter
    assert {"score", "mask_fraction", "bimodality"} <= set(best)
    assert abs(best["mask_fraction"] - 0.25) < 1e-6


def test_direction_scores_penalise_tiny_changes(scene):
    small = direction_scores(scene, 1e-3 * torch.eye(4)[[0]], n=8)
    full = direction_scores(scene, torch.eye(4)[[0]], n=8)
    assert small[0]["strength"] < 0.1 and small[0]["score"] < 0.1 * full[0]["score"]


def test_dev_scores_with_the_exact_inverse(scene):
    images = to_uint8(scene(torch.randn(6, 4, generator=torch_generator(5))))
    gt = scene.module.fg.repeat_interleave(2, 0).repeat_interleave(2, 1).expand(6, -1, -1)   # at twice the size
    scores = dev_scores(scene, scene.module.invert, torch.eye(4), images, gt)
    assert len(scores) == 8 and set(scores[0]) == {"index", "sign", "max_f_beta", "iou"}
    top = best_dev(scores)
    assert (top["index"], top["sign"]) == (0, 1) and top["max_f_beta"] == pytest.approx(1) and top["iou"] == pytest.approx(1)
    by = {(s["index"], s["sign"]): s for s in scores}
    assert by[(0, -1)]["iou"] == pytest.approx(0) and by[(3, 1)]["iou"] == pytest.approx(0.2)   # left half ∩ object / union: 32 / 160


# ------------------------------------------------------------------------------------------------------- encoder
def test_encoder_learns_to_invert_and_embedding_latents_are_near_the_embeddings(scene):
    res = train_encoder(scene, steps=40, batch_size=32, lr=3e-3, recon_weight=0.0, width=8)
    mse = res.history["latent_mse"]
    assert np.mean(mse[-5:]) < 0.5 * np.mean(mse[:3]), mse
    assert res.model.dim == 4 and all(p.grad is None for p in scene.module.parameters())
    images = to_uint8(scene(torch.randn(5, 4, generator=torch_generator(6))))
    r2 = train_encoder(scene, steps=2, batch_size=4, images=images, width=8)
    assert {"latent_mse", "recon", "real_recon"} <= set(r2.history.keys())
    lat = embedding_latents(res.model, images, alpha=0.0)
    z = lat(7, torch_generator(0))
    assert z.shape == (7, 4)
    with torch.no_grad(): emb = res.model(images.float() / 127.5 - 1)
    assert all(any(torch.allclose(row, e, atol=1e-5) for e in emb) for row in z)   # alpha 0: exactly embeddings


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", DEFORMATOR_KINDS)
def test_deformator_round_trip_through_the_registry(tmp_path, kind):
    d = make_deformator(kind, 6, None if kind == "orthogonal" else 4, seed=9)
    path = save_directions(d, tmp_path / "d.safetensors")
    assert read_checkpoint(path).info["arch"] == "wb:latent-directions"
    back = load_model(path, device="cpu").model
    assert back.kind == kind and back.k == d.k
    torch.testing.assert_close(back.directions(), d.directions())
    torch.testing.assert_close(load_directions(path, device="cpu").directions(), d.directions())


def test_encoder_round_trip_through_the_registry(tmp_path):
    from workbench.methods.directions import LatentEncoder
    torch.manual_seed(0)
    e = LatentEncoder(5, width=8).eval()
    path = save_encoder(e, tmp_path / "e.safetensors")
    back = load_model(path, device="cpu").model
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad(): torch.testing.assert_close(back(x), e(x))
    assert isinstance(load_encoder(path, device="cpu"), LatentEncoder)
    with pytest.raises(InputError, match="not wb:latent-directions"): load_directions(path)


def test_checkpoint_loads_in_a_fresh_process_without_importing_the_module(tmp_path):
    import subprocess, sys
    from conftest import ROOT
    path = save_directions(make_deformator("linear", 4, 2, seed=1), tmp_path / "d.safetensors")
    code = ("import sys; from workbench.models.registry import load_model; "
            f"m = load_model({str(path)!r}, device='cpu').model; print(type(m).__name__, m.kind, m.k)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-3:] == ["Deformator", "linear", "2"]


# ------------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs(scene):
    assert_names_argument(lambda: make_deformator("rotation", 4), "kind")
    assert "orthogonal, linear, projective, identity" in str(pytest.raises(InputError, make_deformator, "x", 4).value)
    assert_names_argument(lambda: make_deformator("orthogonal", 4, k=2), "k")
    assert_names_argument(lambda: make_deformator("identity", 4, k=5), "k")
    assert_names_argument(lambda: make_deformator("linear", 0), "dim")
    assert_names_argument(lambda: shift_masks(scene, torch.eye(4)[0], torch.zeros(2, 4), variant="median"), "variant")
    assert_names_argument(lambda: shift_masks(scene, torch.zeros(3), torch.zeros(2, 4)), "direction")
    assert_names_argument(lambda: synthetic_pairs(scene, torch.eye(4)[0], n=0), "n")
    assert_names_argument(lambda: synthetic_pairs(scene, torch.eye(4)[0], n=2, latents=3), "latents")
    assert_names_argument(lambda: DirectionsConfig(deformator="rotation"), "deformator")
    assert_names_argument(lambda: DirectionsConfig(steps=True), "steps")
    assert_names_argument(lambda: DirectionsConfig(min_shift=7.0), "min_shift")
    assert_names_argument(lambda: MaskFilters(size=1), "size")
    assert_names_argument(lambda: MaskFilters(component_ratio=1.0), "component_ratio")
    assert_names_argument(lambda: direction_scores(scene, torch.eye(3)), "directions")
    assert_names_argument(lambda: direction_grid(scene, torch.eye(4), torch.zeros(1, 4), ks=[9], eps=1.0), "ks")
    assert_names_argument(lambda: dev_scores(scene, scene.module.invert, torch.eye(4), torch.zeros(2, 3, 16, 16), torch.zeros(2, 16, 16)),
                          "images_uint8")
    assert_names_argument(lambda: pick_direction([]), "scores")
    assert_names_argument(lambda: train_directions(scene, dict(steps=1)), "cfg")
    with pytest.raises(InputError, match="no adapter"): train_directions(nn.Linear(2, 2), DirectionsConfig.profile("smoke"))


def test_profiles():
    smoke, bench, full = (DirectionsConfig.profile(p) for p in ("smoke", "bench", "full"))
    assert (full.steps, full.batch_size, full.deformator, full.lr, full.reconstructor) == (100_000, 32, "orthogonal", 1e-4, "resnet18")
    assert smoke.reconstructor == "small" and smoke.steps < bench.steps < full.steps
    assert (full.shift_scale, full.min_shift, full.shift_weight, full.k) == (6.0, 0.5, 0.25, None)
