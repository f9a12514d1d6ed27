"""workbench.models.clip: scoring with any open_clip CLIP, masked views, the small aerial CLIP, its training and evaluation."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from workbench.models.clip import (AERIAL_PROMPT, PAPER_TAU, VIEW_CLASSES, ClipScorer, blob_masks, calibrate_tau,
                                   image_config, mask_images, masked_view_report, masked_view_scores,
                                   masked_view_set, preprocess_images, present_classes, retrieval_accuracy,
                                   small_clip, small_clip_config, view_class_map)
from workbench.models.transforms import OPENAI_MEAN
from workbench.train.clip import AerialPairs, DedupClipLoss, train_clip
from workbench.core import InputError, torch_generator
from workbench.models.registry import load_model, read_checkpoint, save_checkpoint
from workbench.data.worlds import AerialWorld

CHECKPOINT = ROOT / "checkpoints" / "aerial_clip.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_model("wb:aerial-clip", pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def samples():
    world = AerialWorld(size=64, seed=3)
    return [world[i] for i in range(12)]


TINY = dict(vision_layers=1, text_layers=1, vision_width=64, text_width=32, text_heads=2, embed_dim=32)


def tiny_clip():
    torch.manual_seed(0)
    return small_clip(**TINY)


def test_scorer_shapes_normalisation_cache_and_batch_invariance(lm):
    assert lm.tokenizer is None            # the registry builds wb: models without one; the scorer supplies CLIP's BPE
    sc = ClipScorer.from_loaded(lm, batch_size=3)
    x = torch.rand(7, 3, 64, 64)
    e = sc.encode_images(x)
    assert e.shape == (7, sc.embed_dim) and torch.allclose(e.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(ClipScorer(lm.model, batch_size=64).encode_images(x), e, atol=1e-5)
    assert torch.allclose(sc.encode_images(x[2:4]), e[2:4], atol=1e-5)
    t = sc.encode_text([AERIAL_PROMPT, "an aerial photograph of cars", AERIAL_PROMPT])
    assert t.shape == (3, sc.embed_dim) and torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(t[0], t[2]) and set(sc._text) == {AERIAL_PROMPT, "an aerial photograph of cars"}
    cached = sc._text[AERIAL_PROMPT]
    assert sc.encode_text(AERIAL_PROMPT)[0] is not None and sc._text[AERIAL_PROMPT] is cached
    sim = sc.similarity(x, [AERIAL_PROMPT, "an aerial photograph of cars"])
    assert sim.shape == (7, 2) and torch.allclose(sim, e @ t[:2].T, atol=1e-6) and sim.abs().max() <= 1 + 1e-5
    assert sc.encode_images(torch.zeros(0, 3, 64, 64)).shape == (0, sc.embed_dim)
    assert sc.tau == PAPER_TAU                 # random weights carry no calibrated threshold
    u8 = (x * 255).round().byte()
    assert torch.allclose(sc.encode_images(u8), sc.encode_images(u8.float() / 255), atol=1e-6)


def test_scorer_refuses_what_is_not_a_clip():
    with pytest.raises(InputError, match="not an open_clip CLIP"):
        ClipScorer(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("hw", [(80, 96), (128, 112), (64, 64), (48, 40), (256, 256)])
def test_tensor_preprocessing_matches_the_models_pil_transform(lm, hw):
    world_image = AerialWorld(size=256, seed=0)[2].image
    img = torch.nn.functional.interpolate(world_image[None].float(), size=hw, mode="bilinear", antialias=True)[0].round().byte()
    ref = lm.preprocess(Image.fromarray(img.permute(1, 2, 0).numpy()))
    ours = ClipScorer.from_loaded(lm).preprocess(img[None].float() / 255)[0]
    assert ours.shape == ref.shape == (3, 64, 64)
    diff = (ours - ref).abs() * torch.tensor(image_config(lm.model)["std"]).view(3, 1, 1)
    assert diff.mean() < 2 / 255 and diff.max() < 16 / 255, (diff.mean(), diff.max())


@pytest.mark.parametrize("mode", ["longest", "squash"])
def test_other_resize_modes_match_open_clip(mode):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    pcfg = PreprocessCfg(size=48, resize_mode=mode, interpolation="bilinear", fill_color=0)
    ref_tf = image_transform_v2(pcfg, is_train=False)
    cfg = dict(size=(48, 48), mean=pcfg.mean, std=pcfg.std, interpolation="bilinear", resize_mode=mode, fill_color=0)
    img = AerialWorld(size=128, seed=0)[0].image[:, :, 16:112]          # 128 x 96
    ref = ref_tf(Image.fromarray(img.permute(1, 2, 0).numpy()))
    ours = preprocess_images(img[None].float() / 255, cfg)[0]
    assert ours.shape == ref.shape
    assert ((ours - ref).abs() * 0.27).mean() < 2 / 255


def test_masked_views(lm):
    sc = ClipScorer.from_loaded(lm)
    x = torch.rand(3, 3, 16, 16)
    m = torch.zeros(3, 1, 16, 16, dtype=torch.bool)
    m[:, :, 4:9, 5:12] = True
    out = sc.masked(x, m)
    assert torch.equal(out[:, :, 4:9, 5:12], x[:, :, 4:9, 5:12])
    assert torch.allclose(out[:, :, 0, 0], torch.tensor(OPENAI_MEAN).expand(3, 3))
    normed = sc.preprocess(torch.nn.functional.interpolate(out, size=64))  # outside the mask the model sees exactly 0
    assert normed[:, :, 0, 0].abs().max() < 1e-6
    assert torch.equal(mask_images(x, m[:, 0], fill="black")[:, :, 0, 0], torch.zeros(3, 3))
    assert torch.allclose(mask_images(x, m.float() * 0.5, fill=0.0), x * 0.5 * m)
    with pytest.raises(ValueError, match="masks must be"):
        mask_images(x, m[:2])
    with pytest.raises(InputError, match="valid: 'mean'"):
        mask_images(x, m, fill="grey")
    sims = sc.masked_similarity(x, m, [AERIAL_PROMPT])
    assert torch.allclose(sims, sc.similarity(out, AERIAL_PROMPT))
    assert sc.consistent(x, m, tau=-1.0).all() and not sc.consistent(x, m, tau=1.01).any()


def test_view_classes_follow_the_instance_masks(samples):
    for s in samples:
        cmap = view_class_map(s)
        planes = s.masks[s.labels == 0].any(0) if (s.labels == 0).any() else torch.zeros(s.size, dtype=torch.bool)
        assert torch.equal(cmap == VIEW_CLASSES.index("airplane") + 1, planes)
        pres = present_classes(cmap)
        assert bool(pres[0]) == bool((s.labels == 0).any() and planes.sum() >= 4)
        assert pres.any()


def test_blob_masks_contain_the_mask_and_are_deterministic(samples):
    cmap = view_class_map(samples[0])
    k = int(torch.nonzero(present_classes(cmap))[0])
    m = (cmap == k + 1)[None].expand(6, -1, -1)
    b1, b2 = blob_masks(m, torch_generator(4)), blob_masks(m, torch_generator(4))
    assert torch.equal(b1, b2) and (b1 >= m).all()
    assert not torch.equal(b1, blob_masks(m, torch_generator(5)))


def test_pairs_batches_are_deterministic_and_mix_views(samples):
    pairs = AerialPairs(samples, len(samples), show_progress=False)
    a = pairs.batch(16, torch_generator(0), masked_fraction=0.5)
    b = pairs.batch(16, torch_generator(0), masked_fraction=0.5)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    imgs, caps, kinds = a
    assert imgs.shape == (16, 3, 64, 64) and 0 <= imgs.min() and imgs.max() <= 1
    assert any(kinds) and not all(kinds)
    for c, k in zip(caps, kinds):
        assert c.startswith("an aerial photograph of ")
        if k == "airplane": assert c == AERIAL_PROMPT
    whole = pairs.batch(8, torch_generator(1), masked_fraction=0.0, augment=False)
    assert not any(whole[2]) and set(whole[1]) <= set(pairs.captions)


def test_dedup_loss_is_clip_loss_without_false_negatives():
    from open_clip.loss import ClipLoss
    g = torch_generator(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    loss = DedupClipLoss()
    assert torch.allclose(loss(img, txt, scale, torch.arange(6)), ClipLoss()(img, txt, scale))
    ids = torch.tensor([0, 1, 0, 2, 3, 1])
    logits = scale * img @ txt.T
    dup = (ids[:, None] == ids[None]) & ~torch.eye(6, dtype=torch.bool)
    li = logits.masked_fill(dup, float("-inf"))
    lt = logits.T.masked_fill(dup, float("-inf"))
    ref = (torch.nn.functional.cross_entropy(li, torch.arange(6)) + torch.nn.functional.cross_entropy(lt, torch.arange(6))) / 2
    assert torch.allclose(loss(img, txt, scale, ids), ref)
    assert loss(img, txt, scale, ids) < ClipLoss()(img, txt, scale)   # fewer negatives, lower loss


def _fixed_batch_loss(model, pairs):
    from workbench.models.clip import preprocess_images as pp
    from open_clip.tokenizer import SimpleTokenizer
    imgs, caps, _ = pairs.batch(12, torch_generator(99), masked_fraction=0.5, augment=False)
    uniq = {c: j for j, c in enumerate(dict.fromkeys(caps))}
    with torch.no_grad():
        f = model(pp(imgs, image_config(model)), SimpleTokenizer(context_length=model.context_length)(caps))
        return float(DedupClipLoss()(f[0], f[1], f[2], torch.tensor([uniq[c] for c in caps])))


def test_training_reduces_loss_and_is_deterministic(samples):
    pairs = AerialPairs(samples[:8], 8, show_progress=False)
    models, hists = [], []
    for _ in range(2):
        m = tiny_clip()
        before = _fixed_batch_loss(m, pairs)
        hists.append(train_clip(m, pairs, steps=12, batch_size=12, lr=3e-3, seed=7, device="cpu", warmup=2).history)
        models.append(m)
    assert hists[0]["loss"] == hists[1]["loss"]
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
    assert _fixed_batch_loss(models[0], pairs) < before
    assert np.mean(hists[0]["loss"][-4:]) < np.mean(hists[0]["loss"][:4])
    assert not models[0].training
    other = train_clip(tiny_clip(), pairs, steps=2, batch_size=12, seed=8, device="cpu").history
    assert other["loss"] != hists[0]["loss"][:2]
    with pytest.raises(InputError, match="masked_fraction"):
        train_clip(tiny_clip(), pairs, steps=1, masked_fraction=2)


def test_checkpoint_round_trip_carries_tau(tmp_path, samples):
    m = tiny_clip()
    p = save_checkpoint(m, tmp_path / "c.safetensors", "wb:aerial-clip", fp16=True, **TINY, tau=0.61)
    loaded = load_model(p, device="cpu")
    sc = ClipScorer.from_loaded(loaded)
    assert loaded.arch == "wb:aerial-clip" and sc.tau == pytest.approx(0.61)
    x = torch.stack([s.image for s in samples[:4]])
    ref = ClipScorer(m.half().float()).similarity(x, [AERIAL_PROMPT, "an aerial photograph of cars"])
    assert torch.allclose(sc.similarity(x, [AERIAL_PROMPT, "an aerial photograph of cars"]), ref, atol=1e-4)


def test_evaluation_helpers(lm, samples):
    sc = ClipScorer.from_loaded(lm)
    r = retrieval_accuracy(sc, samples)
    assert 0 <= r["top1"] <= r["top5"] <= 1 and r["chance"] == 1 / r["n_captions"]
    scores = masked_view_scores(sc, samples, seed=0)
    views, masks, classes, owners = masked_view_set(samples, seed=0)
    assert len(scores["sims"]) == len(views) == len(classes) and scores["class_sims"].shape == (len(views), len(VIEW_CLASSES))
    rep = masked_view_report(scores)
    assert 0 <= rep["auc"] <= 1 and rep["n_pos"] == classes.count("airplane")
    cal = calibrate_tau(np.array([0.3, 0.4, 0.5]), np.array([0.1, 0.2, 0.35]))
    assert cal["auc"] == pytest.approx(8 / 9) and cal["tpr"] - cal["fpr"] == pytest.approx(2 / 3)


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"{CHECKPOINT} is absent: train and publish it with "
                    "`workbench run 27_train_aerial_clip --profile full -p publish true`")
def test_committed_checkpoint_tells_masked_airplanes_from_cars():
    assert CHECKPOINT.stat().st_size <= 10.5 * 2**20
    ck = read_checkpoint(CHECKPOINT)        # safetensors: tensors and JSON metadata only, no code
    assert set(ck.info["kwargs"]) == set(small_clip_config()) | {"tau"}      # the full architecture, not the defaults
    assert ck.info["arch"] == "wb:aerial-clip" and all(v.dtype == torch.float16 for v in ck.tensors.values() if v.is_floating_point())
    sc = ClipScorer.from_loaded(load_model(CHECKPOINT, device="cpu"))
    assert sc.tau != PAPER_TAU and -1 < sc.tau < 1
    world = AerialWorld(size=64, seed=20_000)          # neither the training pool nor the notebook's held-out set
    chosen = [s for s in (world[i] for i in range(80)) if (s.labels == 0).any() and (s.labels == 1).sum() >= 2][:6]
    assert len(chosen) >= 3
    views, _, classes, _ = masked_view_set(chosen, seed=0)
    sims = sc.similarity(views, AERIAL_PROMPT)[:, 0]
    cls = np.asarray(classes)
    plane, car = sims[torch.from_numpy(cls == "airplane")], sims[torch.from_numpy(cls == "car")]
    assert plane.mean() > car.mean() + 0.05, (plane, car)
    assert (plane >= sc.tau).float().mean() > (car >= sc.tau).float().mean()


def test_scorer_takes_an_open_clip_architecture_from_the_registry():
    lm = load_model("clip:ViT-S-32", pretrained=False, device="cpu")     # random weights: nothing is downloaded
    sc = ClipScorer.from_loaded(lm)
    assert sc.image_size == (224, 224) and sc.tau == PAPER_TAU and lm.tokenizer is sc.tokenizer
    img = AerialWorld(size=256, seed=0)[0].image[:, :, 8:248]
    ref = lm.preprocess(Image.fromarray(img.permute(1, 2, 0).numpy()))
    diff = (sc.preprocess(img[None].float() / 255)[0] - ref).abs() * torch.tensor(image_config(lm.model)["std"]).view(3, 1, 1)
    assert diff.mean() < 2 / 255 and diff.max() < 8 / 255
    sim = sc.masked_similarity(img[None].repeat(2, 1, 1, 1), torch.ones(2, 1, 256, 240, dtype=torch.bool), [AERIAL_PROMPT, "a dog"])
    assert sim.shape == (2, 2) and torch.allclose(sim[0], sim[1], atol=1e-5)
