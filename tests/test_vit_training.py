"""workbench.train.vits: the three training loops on tiny settings (finite, decreasing-ish, deterministic), MAE masking and
targets, DINO centring and teacher EMA, the wb:object-vit checkpoint round trip, and the committed checkpoints."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.core import InputError, torch_generator
from workbench.models.hooks import Trace
from workbench.models.registry import load_model, read_checkpoint
from workbench.models.vits import block_attention_layers, input_config
from workbench.methods.attention import collect_attention
from workbench.train.vits import (DINO_LOCAL_VIEW, DINOHead, DINOLoss, MultiCropNet, ViewSpec, encode_visible,
                                  make_views, mae_loss, patch_targets, koleo_loss, patchify, random_crop_boxes,
                                  random_masking, rotate_hue, sinkhorn_knopp, train_dino, train_mae,
                                  train_object_vit, train_supervised, unpatchify)
from workbench.models.vits import (SUPERVISIONS, new_object_vit, object_vit_checkpoint, object_vit_config,
                                   save_object_vit)
from workbench.train.loop import cosine_schedule, ema_update_
from workbench.methods.features import evaluate_object_vit
from workbench.data.worlds import ObjectWorld

TINY = dict(embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def world():
    return ObjectWorld(size=64, seed=0)


@pytest.fixture(scope="module")
def pool(world):
    return world.images(48, progress=False)


def tiny(seed=0, **kw):
    return new_object_vit(seed, **TINY, **kw)


def decreasing(losses, k=3):
    return np.mean(losses[-k:]) < np.mean(losses[:k])


# ------------------------------------------------------------------ architecture and checkpoints
def test_object_vit_round_trip(tmp_path):
    m = tiny(num_classes=8).eval()
    p = save_object_vit(m, tmp_path / "v.safetensors", fp16=False)
    lm = load_model(p, device="cpu")
    assert lm.arch == "wb:object-vit" and lm.info["kwargs"] == object_vit_config(m)
    x = torch.randn(2, 3, 64, 64, generator=torch_generator(0))
    with torch.no_grad():
        assert torch.allclose(lm.model(x), m(x), atol=1e-6)
    half = load_model(save_object_vit(m, tmp_path / "h.safetensors"), device="cpu")
    assert all(t.dtype == torch.float16 for t in read_checkpoint(tmp_path / "h.safetensors").tensors.values())
    with torch.no_grad():
        assert torch.allclose(half.model(x), m(x), atol=5e-2)
    random = load_model("wb:object-vit", pretrained=False, device="cpu")
    assert type(random.model).__name__ == "VisionTransformer" and random.model.patch_embed.grid_size == (8, 8)


def test_same_seed_same_initial_weights():
    a, b, c = tiny(1), tiny(1), tiny(2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.pos_embed, c.pos_embed)


# ------------------------------------------------------------------ data
def test_views_shapes_determinism_and_range(pool):
    images, _ = pool
    v = make_views(images[:5], DINO_LOCAL_VIEW, torch_generator(3))
    assert v.shape == (5, 3, 32, 32) and torch.equal(v, make_views(images[:5], DINO_LOCAL_VIEW, torch_generator(3)))
    assert not torch.equal(v, make_views(images[:5], DINO_LOCAL_VIEW, torch_generator(4)))
    boxes = random_crop_boxes(200, 64, 64, (0.05, 0.4), generator=torch_generator(0))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 64 ** 2
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64 + 1e-4).all()
    assert area.min() >= 0.05 - 1e-3 and area.max() <= 0.4 + 1e-3
    with pytest.raises(InputError):
        make_views(images[0], DINO_LOCAL_VIEW, torch_generator(0))


def test_hue_rotation_keeps_luma_and_turns_colours(pool):
    x = torch.rand(3, 3, 8, 8, generator=torch_generator(0))
    assert torch.allclose(rotate_hue(x, torch.zeros(3)), x, atol=1e-5)
    assert torch.allclose(rotate_hue(x, torch.full((3,), 2 * math.pi)), x, atol=1e-5)
    gray = x[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(rotate_hue(gray, torch.full((3,), 1.0)), gray, atol=1e-5)       # no chroma: nothing to turn
    red = torch.zeros(1, 3, 2, 2); red[:, 0] = 0.6
    turned = rotate_hue(red, torch.tensor([2 * math.pi / 3]))
    assert turned[0, 0].mean() < 0.3 and turned[0, 1:].mean() > 0.1                     # red is no longer red
    images, _ = pool
    spec = ViewSpec(64, (1.0, 1.0), flip=0.0, jitter=(0.0, 0.0, 0.0), p_jitter=1.0, p_gray=0.0, hue=0.5)
    v, plain = make_views(images[:4], spec, torch_generator(0)), make_views(images[:4], ViewSpec(64, (1.0, 1.0), flip=0.0, p_jitter=0.0, p_gray=0.0), torch_generator(0))
    assert not torch.allclose(v, plain, atol=1e-3)


def test_schedule():
    assert cosine_schedule(0, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.1)
    assert cosine_schedule(9, 100, 1.0, 0.0, warmup=10) == pytest.approx(1.0)
    assert cosine_schedule(100, 100, 1.0, 0.2, warmup=10) == pytest.approx(0.2)
    assert cosine_schedule(0, 10, 0.04, 0.4) == pytest.approx(0.04)


# ------------------------------------------------------------------ supervised
def test_supervised_learns_and_is_deterministic(pool):
    images, labels = pool
    kw = dict(steps=15, batch_size=16, lr=3e-3, seed=5, device="cpu", view=ViewSpec(64, (0.8, 1.0), p_jitter=0, p_gray=0))
    r1 = train_supervised(tiny(), images[:32], labels[:32], **kw)
    r2 = train_supervised(tiny(), images[:32], labels[:32], **kw)
    assert r1.history["loss"] == r2.history["loss"]
    assert all(math.isfinite(v) for v in r1.history["loss"]) and decreasing(r1.history["loss"]), r1.history["loss"]
    assert r1.history["loss"] != train_supervised(tiny(), images[:32], labels[:32], **{**kw, "seed": 6}).history["loss"]
    assert not r1.model.training


def test_supervised_rejects_bad_labels(pool):
    images, labels = pool
    with pytest.raises(InputError, match="labels"):
        train_supervised(tiny(), images[:8], labels[:7], steps=1, batch_size=4)
    with pytest.raises(InputError, match="valid: supervised, dino, mae"):
        train_object_vit("simclr", tiny(), images)
    with pytest.raises(InputError, match="needs labels"):
        train_object_vit("supervised", tiny(), images)


# ------------------------------------------------------------------ DINO
def test_dino_centering_and_loss():
    loss = DINOLoss(4, student_temp=0.1, center_momentum=0.9)
    t = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 1.0, 0]])   # 2 global crops × batch 2
    s = torch.randn(8, 4, generator=torch_generator(0))                                 # 4 crops × batch 2
    value = loss(s, t, teacher_temp=0.04)
    assert torch.allclose(loss.center, 0.1 * t.mean(0, keepdim=True))
    # by hand: teacher crop iq against every other student crop v
    q = F.softmax(t / 0.04, -1).chunk(2)                        # centre was 0 when the loss was computed
    sv = (s / 0.1).chunk(4)
    terms = [(-q[i] * F.log_softmax(sv[v], -1)).sum(-1).mean() for i in range(2) for v in range(4) if v != i]
    assert torch.allclose(value, torch.stack(terms).mean())
    before = loss.center.clone()
    loss.update_center(t)
    assert torch.allclose(loss.center, 0.9 * before + 0.1 * t.mean(0, keepdim=True))
    # centring removes a shift common to all teacher outputs
    loss.center.fill_(5.0)
    assert torch.allclose(loss.teacher_probs(t + 5.0, 0.04), F.softmax(t / 0.04, -1))


def test_sinkhorn_balances_prototypes():
    logits = torch.randn(64, 8, generator=torch_generator(0)) * 3
    logits[:, 0] += 5                                                  # every sample prefers prototype 0...
    q = sinkhorn_knopp(logits, iters=20)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)         # ...rows stay distributions...
    assert torch.allclose(q.sum(0), torch.full((8,), 8.0), atol=0.2)  # ...but each prototype gets 1/8 of the batch
    assert (q.argmax(1) != 0).any()
    loss = DINOLoss(8, centering="sinkhorn")
    assert torch.allclose(loss.teacher_probs(logits * 0.04, 0.04), sinkhorn_knopp(logits, 3))
    with pytest.raises(InputError, match="centering"):
        DINOLoss(8, centering="median")


def test_dino_head_and_ema():
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(3, 16, generator=torch_generator(0))
    out = head(x)
    assert out.shape == (3, 32) and out.abs().max() <= 1 + 1e-5       # cosine to unit prototypes
    net_t, net_s = MultiCropNet(tiny(0), DINOHead(32, 16, 8, 4)), MultiCropNet(tiny(1), DINOHead(32, 16, 8, 4))
    before = [p.detach().clone() for p in net_t.parameters()]
    ema_update_(net_t, net_s, 0.75)
    for b, pt, ps in zip(before, net_t.parameters(), net_s.parameters()):
        assert torch.allclose(pt, 0.75 * b + 0.25 * ps, atol=1e-6)
    crops = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    assert net_s(crops).shape == (6, 16)


def test_dino_runs_is_deterministic_and_updates_teacher(pool):
    images, _ = pool
    kw = dict(steps=6, batch_size=8, out_dim=64, hidden_dim=32, bottleneck_dim=16, n_local=2, momentum=0.9, seed=2, device="cpu")
    init = tiny()
    r1, r2 = train_dino(tiny(), images[:32], **kw), train_dino(tiny(), images[:32], **kw)
    h = r1.history
    assert h["loss"] == r2.history["loss"] and all(math.isfinite(v) for v in h["loss"])
    assert h["teacher_temp"][0] == pytest.approx(0.04) and h["teacher_temp"][-1] > 0.04
    assert h["momentum"][0] < h["momentum"][-1] <= 1
    teacher, student = r1.parts["teacher"], r1.parts["student"]
    assert r1.model is teacher.backbone and not any(p.requires_grad for p in teacher.parameters())
    assert not torch.equal(teacher.backbone.pos_embed, init.pos_embed)              # the teacher moved...
    assert not torch.equal(teacher.backbone.pos_embed, student.backbone.pos_embed)  # ...but is not the student
    assert r1.parts["loss"].center.abs().sum() > 0


def test_dino_loss_decreases_on_tiny_set(pool):
    images, _ = pool
    r = train_dino(tiny(), images[:16], steps=25, batch_size=16, lr=2e-3, out_dim=32, hidden_dim=32, bottleneck_dim=16,
                   n_local=2, momentum=0.9, seed=0, device="cpu")
    kl = r.history["kl"]          # the loss is teacher entropy + KL(teacher ‖ student): the student drives the KL down
    assert np.allclose(np.array(r.history["loss"]) - np.array(r.history["teacher_entropy"]), kl, atol=1e-4)
    assert decreasing(kl, 5), kl


def test_dino_sinkhorn_bn_head_does_not_collapse(pool):
    images, _ = pool
    r = train_dino(tiny(), images[:32], steps=20, batch_size=16, lr=1e-3, out_dim=16, hidden_dim=32, bottleneck_dim=16,
                   n_local=2, momentum=0.9, teacher_temp=0.04, warmup_teacher_temp=0.04, centering="sinkhorn", use_bn=True,
                   seed=0, device="cpu")
    h = r.history
    assert decreasing(h["kl"], 5), h["kl"]
    assert min(h["batch_entropy"]) > 0.9 * math.log(16)                  # every prototype used: no collapse onto a few
    assert np.mean(h["teacher_entropy"][-5:]) < 0.9 * math.log(16)        # and not uniform per image
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in r.parts["student"].head.modules())


def test_koleo_loss_by_hand_and_spreading():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.1]])
    xn = F.normalize(x, dim=-1)
    d = torch.cdist(xn, xn) + torch.diag(torch.full((3,), 9.0))
    assert torch.allclose(koleo_loss(x), -torch.log(d.min(1).values).mean(), atol=1e-5)   # nearest other row, scale-free
    clumped = F.normalize(torch.ones(8, 4) + 0.01 * torch.randn(8, 4, generator=torch_generator(0)), dim=-1)
    spread = torch.cat([torch.eye(4), -torch.eye(4)])                     # 8 points, nearest neighbour at sqrt(2)
    assert koleo_loss(spread) == pytest.approx(-math.log(math.sqrt(2)), abs=1e-5) and koleo_loss(spread) < koleo_loss(clumped)
    with pytest.raises(InputError, match="at least 2"):
        koleo_loss(torch.ones(1, 4))
    # gradient descent on it spreads the rows apart
    y = clumped.clone().requires_grad_(True)
    opt = torch.optim.SGD([y], lr=0.05)
    for _ in range(30):
        opt.zero_grad(); koleo_loss(y).backward(); opt.step()
    yn = F.normalize(y.detach(), dim=-1)
    assert (yn @ yn.T - torch.eye(8)).max() < (clumped @ clumped.T - torch.eye(8)).max()


def test_dino_loss_koleo_option(pool):
    s, t = torch.randn(8, 4, generator=torch_generator(0)), torch.randn(4, 4, generator=torch_generator(1))
    feats = torch.randn(8, 6, generator=torch_generator(2))               # rows of 4 crops × batch 2, global crops first
    plain = DINOLoss(4)(s, t, 0.04)
    with_k = DINOLoss(4, koleo_weight=0.5)
    value = with_k(s, t, 0.04, student_features=feats)
    assert torch.allclose(value, plain + 0.5 * (koleo_loss(feats[:2]) + koleo_loss(feats[2:4])), atol=1e-6)
    assert with_k.last_koleo == pytest.approx(float(koleo_loss(feats[:2]) + koleo_loss(feats[2:4])) / 2, abs=1e-5)
    with pytest.raises(InputError, match="global crops"):
        with_k(s, t, 0.04)
    with pytest.raises(InputError, match="koleo_weight"):
        DINOLoss(4, koleo_weight=-1)
    images, _ = pool
    kw = dict(steps=4, batch_size=8, out_dim=32, hidden_dim=32, bottleneck_dim=16, n_local=1, momentum=0.9, seed=0, device="cpu")
    r = train_dino(tiny(), images[:16], koleo_weight=0.1, **kw)
    h = r.history
    assert len(h["koleo"]) == 4 and all(math.isfinite(v) for v in h["koleo"])
    assert np.allclose(np.array(h["loss"]) - np.array(h["teacher_entropy"]) - 0.2 * np.array(h["koleo"]),
                       h["kl"], atol=1e-4)
    assert "koleo" not in train_dino(tiny(), images[:16], **kw).history.keys()


# ------------------------------------------------------------------ MAE
def test_masking_ratio_and_targets():
    plan = random_masking(5, 64, 0.75, torch_generator(0))
    assert plan.keep.shape == (5, 16) and plan.mask.shape == (5, 64) and plan.mask.sum(1).tolist() == [48] * 5
    assert not plan.mask.gather(1, plan.keep).any()
    assert torch.equal(plan.restore.argsort(1)[:, :16], plan.keep)
    assert not torch.equal(plan.keep, random_masking(5, 64, 0.75, torch_generator(1)).keep)
    x = torch.randn(2, 3, 64, 64, generator=torch_generator(0))
    assert torch.equal(unpatchify(patchify(x, 8), 8), x)
    assert torch.equal(patchify(x, 8)[0, 9], x[0, :, 8:16, 8:16].permute(1, 2, 0).reshape(-1))   # patch (1, 1)
    t = patch_targets(x, 8)
    assert t.shape == (2, 64, 192)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 64), atol=1e-5) and torch.allclose(t.var(-1), torch.ones(2, 64), atol=1e-3)
    with pytest.raises(InputError):
        random_masking(1, 64, 1.0, torch_generator(0))


def test_mae_loss_counts_masked_patches_only():
    pred, target = torch.zeros(1, 4, 3), torch.ones(1, 4, 3)
    mask = torch.tensor([[True, False, False, True]])
    assert mae_loss(pred, target, mask).item() == pytest.approx(1.0)
    pred[0, 1] = 1.0
    assert mae_loss(pred, target, mask).item() == pytest.approx(1.0)
    pred[0, 0] = 1.0
    assert mae_loss(pred, target, mask).item() == pytest.approx(0.5)


def test_mae_encoder_is_the_object_vit(pool):
    images, _ = pool
    kw = dict(steps=12, batch_size=16, lr=3e-3, decoder_dim=32, decoder_depth=1, decoder_heads=2, seed=3, device="cpu")
    r1, r2 = train_mae(tiny(), images[:32], **kw), train_mae(tiny(), images[:32], **kw)
    assert r1.history["loss"] == r2.history["loss"] and decreasing(r1.history["loss"]), r1.history["loss"]
    m = r1.model
    assert set(m.state_dict()) == set(tiny().state_dict()) and m.pos_embed.requires_grad
    x = torch.randn(2, 3, 64, 64, generator=torch_generator(0))
    with torch.no_grad():
        assert torch.allclose(encode_visible(m, x, torch.arange(64).expand(2, -1)), m.forward_features(x), atol=1e-5)
        latent = encode_visible(m, x, random_masking(2, 64, 0.75, torch_generator(0)).keep)
    assert latent.shape == (2, 17, 32)


# ------------------------------------------------------------------ evaluation
def test_evaluation_metrics(world):
    m = tiny().eval()
    ev = evaluate_object_vit(m, [world[i] for i in range(100, 132)], [world[i] for i in range(132, 148)], name="t")
    mt = ev.metrics()
    assert len(mt["knn_cls_by_layer"]) == 2 and len(mt["iou_cls_by_layer"]) == 2 and mt["n_queries"] == 16
    assert 0 <= mt["knn_accuracy"] <= 1 and 0 <= mt["iou_last"] <= 1
    assert abs(mt["distance_by_layer"][0] - 0.517) < 0.05          # untrained: close to uniform attention on 8 × 8


# ------------------------------------------------------------------ committed checkpoints
@pytest.mark.parametrize("supervision", SUPERVISIONS)
def test_committed_checkpoint(supervision, world):
    path = object_vit_checkpoint(supervision)
    if not path.is_file():
        pytest.skip(f"{path} not present (train it with `workbench run 43_train_object_vits ... -p publish true`)")
    assert path.stat().st_size < 4e6
    lm = load_model(path, device="cpu")                           # safetensors: weights only, no code
    assert lm.arch == "wb:object-vit" and type(lm.model).__name__ == "VisionTransformer"
    cfg = input_config(lm.model)
    x = lm.preprocess(world[0].image)[None]
    layers = block_attention_layers(lm.model)
    with torch.no_grad(), Trace(lm.model, layers) as tr:
        lm.model(x)
    for name in layers:
        a = tr[name].output
        assert a.shape == (1, lm.model.blocks[0].attn.num_heads, 65, 65)
        assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-4)
    assert cfg["size"] == (64, 64)
