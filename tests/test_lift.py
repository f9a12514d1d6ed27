"""workbench.methods.lift: LiFT's shapes at several sizes, the no-image ablation and 2×LiFT, the loss options, training
(lowers the loss, deterministic, the ViT untouched), FLOPs, the keypoint helper on exact warps, the fp16 checkpoint round
trip, and bad inputs."""
import numpy as np
import pytest
import torch

from conftest import assert_names_argument
from workbench.core import InputError, torch_generator
from workbench.data.worlds import ObjectWorld
from workbench.methods.features import warp_pairs
from workbench.methods.lift import (LOSSES, LiFT, LiFTConfig, bilinear_upsample, count_params, feature_distance,
                                    feature_pck, flops, lift_cost, lift_loss, lift_objective, load_lift, new_lift,
                                    pck_rows, save_lift, train_lift, upsampler_pck, vit_features, feature_cost,
                                    plain_features, bilinear_features, lift_features, upscaled_features, strided_features)
from workbench.models.registry import load_model, read_checkpoint
from workbench.models.vits import new_object_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lift(seed=0, **kw):
    return new_lift("small", seed, **{**dict(dim=32, width=16, image_width=8, image_width_max=16), **kw})


@pytest.fixture(scope="module")
def vit():
    return new_object_vit(0, embed_dim=32, depth=2, num_heads=2).eval()


@pytest.fixture(scope="module")
def world():
    return ObjectWorld(size=64, seed=0)


@pytest.fixture(scope="module")
def pool(world):
    return world.images(40, progress=False)[0]


def assert_one_line_error(call, *words):
    with pytest.raises(InputError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


# ------------------------------------------------------------------ architecture
@pytest.mark.parametrize("patch", [8, 16])
@pytest.mark.parametrize("side", [32, 48, 40])
def test_lift_doubles_the_grid_at_any_size(patch, side):
    m = tiny_lift(patch_size=patch).eval()
    g = side // patch
    f, x = torch.randn(2, 32, g, g), torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert m(f, x).shape == (2, 32, 2 * g, 2 * g)
        assert m.upsample(f, x, times=2).shape == (2, 32, 4 * g, 4 * g)
        assert m.upsample(f, x, times=0) is f
        assert m(f, x, size=(3, 5)).shape == (2, 32, 3, 5)


def test_rectangular_grids_and_the_no_image_ablation():
    m = tiny_lift().eval()
    with torch.no_grad(): assert m(torch.randn(1, 32, 3, 5), torch.randn(1, 3, 24, 40)).shape == (1, 32, 6, 10)
    blind = tiny_lift(use_image=False).eval()
    assert len(blind.image_stages) == 0 and count_params(blind) < count_params(m)
    with torch.no_grad(): assert blind(torch.randn(1, 32, 3, 5)).shape == (1, 32, 6, 10)


def test_untrained_residual_lift_is_bilinear_and_the_non_residual_one_is_not():
    f, x = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tiny_lift().eval()(f, x), bilinear_upsample(f, 2))
    assert not torch.allclose(tiny_lift(residual=False).eval()(f, x), bilinear_upsample(f, 2), atol=1e-3)


def test_profiles_and_parameter_counts():
    thesis, small = LiFT(LiFTConfig.profile("thesis")), LiFT(LiFTConfig.profile("small"))
    assert thesis.config.dim == 384 and 1.0e6 < count_params(thesis) < 1.2e6
    assert small.config.dim == 128 and small.config.patch_size == 8 and count_params(small) < count_params(thesis)
    assert LiFTConfig.profile("thesis").image_widths == [16, 32, 64, 64]


def test_new_lift_is_seeded():
    a, b, c = tiny_lift(1, residual=False), tiny_lift(1, residual=False), tiny_lift(2, residual=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


# ------------------------------------------------------------------ features and loss
@pytest.mark.parametrize("side", [32, 48, 64])
def test_vit_features_at_any_size(vit, side):
    f = vit_features(vit, torch.randn(2, 3, side, side))
    assert f.shape == (2, 32, side // 8, side // 8) and f.dtype == torch.float32 and not f.is_inference()


def test_fixed_size_timm_vit_is_refused_at_another_size():
    import timm
    v = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1).eval()
    assert vit_features(v, torch.randn(1, 3, 32, 32)).shape == (1, 192, 2, 2)
    assert_names_argument(lambda: vit_features(v, torch.randn(1, 3, 64, 64)), "images")
    dyn = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, depth=1,
                            dynamic_img_size=True).eval()
    assert vit_features(dyn, torch.randn(1, 3, 64, 48)).shape == (1, 192, 4, 3)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_options(loss):
    f = torch.randn(2, 16, 4, 4, generator=torch_generator(0))
    assert float(feature_distance(f, f.clone(), loss)) == pytest.approx(0.0, abs=1e-6)
    assert float(feature_distance(f, f + torch.randn(f.shape, generator=torch_generator(1)), loss)) > 0.05
    scaled = float(feature_distance(f, 3 * f, loss))
    assert scaled == pytest.approx(0.0, abs=1e-6) if loss == "cosine" else scaled > 1


def test_objective_has_two_terms(vit):
    x = torch.randn(2, 3, 64, 64, generator=torch_generator(0))
    total, parts = lift_objective(vit, tiny_lift(), x)
    assert float(total.detach()) == pytest.approx(parts["loss_full"] + parts["loss_half"], rel=1e-5)


# ------------------------------------------------------------------ training
def test_training_lowers_the_loss_is_deterministic_and_leaves_the_vit_alone(vit, pool):
    train, held = pool[:32], pool[32:]
    before_vit = [p.clone() for p in vit.parameters()]
    before = lift_loss(vit, tiny_lift(), held)
    kw = dict(steps=20, batch_size=16, lr=1e-2, seed=1, device="cpu")
    r1, r2 = train_lift(vit, tiny_lift(), train, **kw), train_lift(vit, tiny_lift(), train, **kw)
    assert all(torch.equal(a, b) for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()))
    assert r1.history["loss"] == r2.history["loss"] and len(r1.history) == 20
    assert lift_loss(vit, r1.model, held) < before
    assert np.mean(r1.history["loss"][-5:]) < np.mean(r1.history["loss"][:5])
    assert all(torch.equal(a, b) for a, b in zip(before_vit, vit.parameters()))
    assert r1.info["loss"] == "cosine" and r1.parts["vit"] is vit and not r1.model.training
    r3 = train_lift(vit, tiny_lift(), train, **{**kw, "seed": 2})
    assert r3.history["loss"] != r1.history["loss"]


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_training_with_the_other_losses(vit, pool, loss):
    r = train_lift(vit, tiny_lift(), pool[:16], steps=3, batch_size=8, seed=0, loss=loss, device="cpu")
    assert r.info["loss"] == loss and all(np.isfinite(r.history["loss"]))


def test_multi_scale_training_draws_its_sizes_and_checks_them(vit, pool):
    r = train_lift(vit, tiny_lift(), pool[:16], steps=4, batch_size=8, seed=0, sizes=[32, 64], device="cpu")
    assert r.info["sizes"] == [32, 64] and len(r.history) == 4 and all(np.isfinite(r.history["loss"]))
    one = train_lift(vit, tiny_lift(), pool[:16], steps=4, batch_size=8, seed=0, sizes=[64], device="cpu")
    plain = train_lift(vit, tiny_lift(), pool[:16], steps=4, batch_size=8, seed=0, device="cpu")
    assert one.history["loss"] == plain.history["loss"]          # sizes=[the pool's side] is the default
    assert r.history["loss"] != plain.history["loss"]
    for bad in ([], [48], [True], [16]):
        assert_one_line_error(lambda: train_lift(vit, tiny_lift(), pool[:8], steps=1, batch_size=4, sizes=bad, device="cpu"),
                              "sizes", "multiples of 4")


# ------------------------------------------------------------------ cost
def test_finer_grids_by_input_and_by_stride_and_their_cost(vit):
    x = torch.randn(2, 3, 64, 64)
    assert upscaled_features(vit, 2)(x).shape == (2, 32, 16, 16) and upscaled_features(vit, 1)(x).shape == (2, 32, 8, 8)
    stride = vit.patch_embed.proj.stride
    assert strided_features(vit)(x).shape == (2, 32, 15, 15) and strided_features(vit, 8)(x).shape == (2, 32, 8, 8)
    assert vit.patch_embed.proj.stride == stride                  # restored after the call
    torch.testing.assert_close(strided_features(vit, 8)(x), vit_features(vit, x))   # stride = patch: the plain ViT
    assert vit_features(vit, x).shape == (2, 32, 8, 8)
    assert_one_line_error(lambda: strided_features(vit, 9), "stride", "valid")
    fixed = new_object_vit(0, embed_dim=32, depth=2, num_heads=2, dynamic_img_size=False).eval()
    assert_one_line_error(lambda: strided_features(fixed), "vit", "dynamic_img_size")
    m = tiny_lift()
    c = feature_cost(vit, {"plain": plain_features(vit), "bilinear": bilinear_features(vit), "LiFT": lift_features(vit, m),
                           "2x input": upscaled_features(vit), "half stride": strided_features(vit)}, 64)
    assert c["plain"]["ratio"] == 1.0 and c["bilinear"]["ratio"] == 1.0 and c["LiFT"]["ratio"] > 1
    assert c["LiFT"]["ratio"] == pytest.approx(lift_cost(vit, m, 64)["ratio"])
    assert c["2x input"]["ratio"] > 3 and c["half stride"]["ratio"] > 3 and c["half stride"]["grid"] == [15, 15]
    assert c["LiFT"]["grid"] == c["2x input"]["grid"] == [16, 16]


def test_flops_and_cost(vit):
    assert flops(torch.nn.Linear(10, 20), torch.zeros(3, 10)) == 2 * 3 * 10 * 20
    m = tiny_lift()
    c32, c64 = lift_cost(vit, m, 32), lift_cost(vit, m, 64)
    assert c32["grid"] == [4, 4] and c64["grid"] == [8, 8] and c64["vit_flops"] > c32["vit_flops"]
    assert c32["ratio"] == pytest.approx((c32["vit_flops"] + c32["lift_flops"]) / c32["vit_flops"])
    assert lift_cost(vit, m, 32, times=2)["lift_flops"] > c32["lift_flops"]
    assert c32["lift_params"] == count_params(m)


# ------------------------------------------------------------------ keypoints
def test_position_features_match_an_identity_warp_exactly_and_not_a_rotation(world):
    samples = [world[i] for i in range(40, 46)]
    code = torch.randn(1, 8, 64, 64, generator=torch_generator(0))
    by_position = lambda x: code.expand(len(x), -1, -1, -1)
    same = warp_pairs(samples, seed=0, max_rotation=0.0, scale=(1.0, 1.0), translate=0.0)
    r = feature_pck(by_position, same, 64, name="position")
    assert r.pck(0.01).tolist() == [1.0] and r.labels == ["position"] and r.n_pairs == len(same)
    turned = warp_pairs(samples, seed=0, max_rotation=60.0)
    assert float(feature_pck(by_position, turned, 64).pck(0.1)[0]) < 0.5


def test_upsampler_pck_values_are_fractions(vit, world):
    pairs = warp_pairs([world[i] for i in range(40, 44)], seed=0)
    res = upsampler_pck(vit, tiny_lift(), pairs, size=64)
    assert list(res) == ["plain", "bilinear x2", "LiFT", "bilinear x4", "2xLiFT"]
    for row in pck_rows(res):
        assert all(0.0 <= row[f"pck@{a:g}"] <= 1.0 for a in (0.1, 0.05, 0.01))
    # an untrained residual LiFT is bilinear upsampling, so their keypoints agree
    assert torch.equal(res["LiFT"].errors, res["bilinear x2"].errors)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_in_fp16(tmp_path):
    m = tiny_lift(residual=False, use_image=True).eval()
    p = save_lift(m, tmp_path / "lift.safetensors")
    ck = read_checkpoint(p)
    assert ck.info["arch"] == "wb:lift" and {t.dtype for t in ck.tensors.values()} == {torch.float16}
    back = load_lift(p, device="cpu")
    assert back.config == m.config and not back.training
    f, x = torch.randn(1, 32, 4, 4), torch.randn(1, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(back(f, x), m(f, x), atol=2e-2, rtol=2e-2)
    assert isinstance(load_model(p, device="cpu").model, LiFT)


def test_load_lift_refuses_another_architecture(tmp_path):
    from workbench.models.vits import save_object_vit
    p = save_object_vit(new_object_vit(0, embed_dim=32, depth=1, num_heads=2), tmp_path / "vit.safetensors")
    assert_names_argument(lambda: load_lift(p, device="cpu"), "path")


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("call, name", [
    (lambda: LiFTConfig(patch_size=2), "patch_size"),
    (lambda: LiFTConfig(width=0), "width"),
    (lambda: tiny_lift()(torch.randn(1, 16, 4, 4), torch.randn(1, 3, 32, 32)), "features"),
    (lambda: tiny_lift()(torch.randn(1, 32, 4, 4)), "image"),
    (lambda: tiny_lift()(torch.randn(2, 32, 4, 4), torch.randn(1, 3, 32, 32)), "image"),
    (lambda: tiny_lift().upsample(torch.randn(1, 32, 4, 4), torch.randn(1, 3, 32, 32), times=-1), "times"),
    (lambda: bilinear_upsample(torch.randn(1, 32, 4, 4), 0), "factor"),
    (lambda: feature_distance(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 3, 3)), "pred"),
    (lambda: feature_pck("not a function", [], 64), "feature_fn"),
    (lambda: feature_pck(lambda x: x, [], 64), "pairs"),
])
def test_bad_inputs_name_the_argument(call, name):
    assert_names_argument(call, name)


def test_bad_choices_and_sizes_are_one_line_errors(vit, pool):
    assert_one_line_error(lambda: feature_distance(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), "huber"),
                          "loss", "valid: cosine, l1, l2")
    assert_one_line_error(lambda: LiFTConfig.profile("huge"), "profile", "valid: small, thesis")
    assert_one_line_error(lambda: vit_features(vit, torch.randn(1, 3, 36, 36)), "images", "patch size")
    assert_one_line_error(lambda: train_lift(vit, tiny_lift(), pool[:8, :, :48, :48], steps=1, batch_size=4, device="cpu"),
                          "images", "multiples of 4")
    assert_one_line_error(lambda: train_lift(vit, tiny_lift(dim=16), pool[:8], steps=1, batch_size=4, device="cpu"),
                          "lift", "dim=16")
    assert_one_line_error(lambda: train_lift(vit, tiny_lift(), pool[:8], steps=0, device="cpu"), "steps", "valid")
    assert_one_line_error(lambda: train_lift(vit, tiny_lift(), pool[:8], steps=1, loss="huber", device="cpu"), "loss", "valid")
