"""workbench.methods.attention and workbench.methods.features against hand-made attention with known answers, slow loop references (AAAM, distance,
DINO's sort-based mass threshold, DINO's k-NN, purity), attention computed by hand from a timm block, and warps whose
correspondences are exact."""
import math

import numpy as np
import pytest
import torch
import timm

from workbench.core import InputError
from workbench.data.datasets import SamplePair, write_example
from workbench.data.samples import Sample
from workbench.methods.attention import (AttentionAccumulator, aligned_attention, attention_distance,
                                         collect_attention, offset_lengths, offset_pairs, saliency_iou,
                                         token_distances)
from workbench.methods.features import (LayerFeatures, best_layer_table, cluster_by_layer, cluster_scores,
                                        collect_features, keypoint_pck, keypoint_transfer, knn_by_layer,
                                        knn_classify, knn_predict, patch_centres, patch_index, pck, purity_score,
                                        similarity_warp, spair_pairs, warp_image, warp_pairs, warp_points)
from workbench.models.vits import (batches_from_samples, block_attention_layers, dense_features, input_config,
                                   prefix_tokens, token_grid)
from workbench.eval.maps import mass_threshold
from workbench.viz.figures import plot_attention_grid, plot_by_layer, plot_distance_scatter, plot_keypoint_pair

UNIT_SQUARE_MEAN_DISTANCE = (2 + math.sqrt(2) + 5 * math.log(1 + math.sqrt(2))) / 15   # E|X - Y|, X, Y uniform on [0, 1]²


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_attention(b, heads, p, grid, seed=0):
    t = grid[0] * grid[1]
    return torch.randn(b, heads, p + t, p + t, generator=gen(seed)).mul(2).softmax(-1)


# ------------------------------------------------------------------ slow references
def aaam_reference(attn, p, grid):
    "Loop version: every query's renormalised patch attention pasted on a (2h-1, 2w-1) canvas centred on the query."
    h, w = grid
    b, nh = attn.shape[:2]
    out = torch.zeros(b, nh, 2 * h - 1, 2 * w - 1, dtype=torch.float64)
    for q in range(h * w):
        qi, qj = divmod(q, w)
        row = attn[:, :, p + q, p:].double()
        row = (row / row.sum(-1, keepdim=True)).reshape(b, nh, h, w)
        out[:, :, h - 1 - qi:2 * h - 1 - qi, w - 1 - qj:2 * w - 1 - qj] += row
    return out / (h * w)


def distance_reference(attn, p, grid):
    h, w = grid
    b, nh = attn.shape[:2]
    out = torch.zeros(b, nh, dtype=torch.float64)
    for q in range(h * w):
        qi, qj = divmod(q, w)
        row = attn[:, :, p + q, p:].double()
        row = row / row.sum(-1, keepdim=True)
        for k in range(h * w):
            ki, kj = divmod(k, w)
            out += row[:, :, k] * math.hypot((ki - qi) / h, (kj - qj) / w)
    return out / (h * w)


def dino_threshold(values, mass):
    "DINO's visualisation rule: sort ascending, keep where the normalised cumulative sum exceeds 1 - mass."
    val, idx = torch.sort(values)
    val = val / val.sum()
    keep_sorted = torch.cumsum(val, 0) > (1 - mass)
    out = torch.zeros_like(keep_sorted)
    out[idx] = keep_sorted
    return out


def knn_reference(train, ytr, test, k, T, c):
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    preds = []
    for x in test:
        sims = train @ x
        order = sorted(range(len(train)), key=lambda i: -float(sims[i]))[:k]
        votes = [0.0] * c
        for i in order: votes[int(ytr[i])] += math.exp(float(sims[i]) / T)
        preds.append(max(range(c), key=lambda j: (votes[j], -j)))
    return torch.tensor(preds)


def tiny_vit(reg_tokens=0, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=0, reg_tokens=reg_tokens)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def noise_samples(n, size=32, seed=0):
    "Samples with random pixels and one square object mask each (unique patch features, so matching is unambiguous)."
    g = gen(seed)
    out = []
    for i in range(n):
        img = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        m = torch.zeros(1, size, size, dtype=torch.bool)
        m[0, 6:26, 8:24] = True
        out.append(Sample(img, torch.tensor([[8., 6., 24., 26.]]), torch.tensor([i % 3]), m,
                          dict(dataset="noise", id=i, image_label=i % 3, class_names=["a", "b", "c"])))
    return out


# ------------------------------------------------------------------ attention: hand-made answers
def selfish(b, heads, p, grid):
    t = grid[0] * grid[1]
    a = torch.full((b, heads, p + t, p + t), 0.0)
    a[:, :, :p] = 1 / (p + t)
    a[:, :, p:, p:] = torch.eye(t)
    return a


def test_self_attention_distance_zero_and_aaam_peak_at_centre():
    a = selfish(2, 3, 1, (5, 5))
    assert torch.equal(attention_distance(a, 1), torch.zeros(2, 3))
    m = aligned_attention(a, 1)
    assert m.shape == (2, 3, 9, 9)
    assert torch.allclose(m[:, :, 4, 4], torch.ones(2, 3))
    assert float(m.sum() - m[:, :, 4, 4].sum()) == 0


def test_fixed_offset_moves_the_aaam_peak():
    h, w, (di, dj) = 5, 6, (-2, 1)
    t = h * w
    a = torch.zeros(1, 1, 1 + t, 1 + t)
    a[:, :, 0, 1:] = 1 / t
    valid = 0
    for q in range(t):
        i, j = divmod(q, w)
        if 0 <= i + di < h and 0 <= j + dj < w:
            a[0, 0, 1 + q, 1 + (i + di) * w + j + dj] = 1; valid += 1
        else:
            a[0, 0, 1 + q, 1 + q] = 1
    m = aligned_attention(a, 1, grid=(h, w))[0, 0]
    assert m.shape == (9, 11)
    assert torch.isclose(m[h - 1 + di, w - 1 + dj], torch.tensor(valid / t))
    assert torch.isclose(m[h - 1, w - 1], torch.tensor((t - valid) / t))
    d = attention_distance(a, 1, grid=(h, w)).item()
    assert d == pytest.approx(valid / t * math.hypot(di / h, dj / w), rel=1e-6)


def test_uniform_attention_distance_is_the_unit_square_mean():
    k = 32
    t = k * k
    a = torch.full((1, 1, 1 + t, 1 + t), 1 / (1 + t))
    d = attention_distance(a, 1).item()
    assert d == pytest.approx(token_distances((k, k)).mean().item(), rel=1e-5)
    assert abs(d - UNIT_SQUARE_MEAN_DISTANCE) < 1e-3       # the grid mean converges to 0.5214 as O(1/k²)
    small = torch.full((1, 1, 1 + 16, 1 + 16), 1 / 17)
    m = aligned_attention(small, 1)[0, 0].double()
    assert torch.allclose(m, offset_pairs((4, 4)) / 16 ** 2, atol=1e-7)   # the tent of pair counts


def test_prefix_and_register_tokens_are_excluded_and_rows_renormalised():
    g = (3, 4)
    a = random_attention(2, 2, 5, g, seed=3)
    a2 = a.clone()
    a2[:, :, 5:, :5] *= 0.1                      # change only what patch queries spend on prefix tokens
    a2[:, :, 5:] /= a2[:, :, 5:].sum(-1, keepdim=True)
    assert torch.allclose(attention_distance(a, 5, g), attention_distance(a2, 5, g), atol=1e-6)
    assert torch.allclose(aligned_attention(a, 5, g), aligned_attention(a2, 5, g), atol=1e-6)


def test_aaam_and_distance_match_loop_references_on_a_rectangular_grid():
    g, p = (3, 5), 2
    a = random_attention(3, 2, p, g, seed=1)
    assert torch.allclose(aligned_attention(a, p, g).double(), aaam_reference(a, p, g), atol=1e-6)
    assert torch.allclose(attention_distance(a, p, g).double(), distance_reference(a, p, g), atol=1e-6)
    # distance = sum over offsets of AAAM x offset length
    assert torch.allclose((aligned_attention(a, p, g).double() * offset_lengths(g)).sum((-2, -1)),
                          distance_reference(a, p, g), atol=1e-6)


def test_token_grid_errors():
    assert token_grid(197, 1) == (14, 14)
    assert token_grid(1 + 12, 1, grid=(3, 4)) == (3, 4)
    with pytest.raises(InputError, match="square grid"):
        token_grid(1 + 12, 1)
    with pytest.raises(InputError, match="cells"):
        token_grid(1 + 12, 1, grid=(4, 4))


# ------------------------------------------------------------------ mass threshold and IoU
def test_mass_threshold_equals_dino_rule_without_ties():
    x = torch.rand(6, 7, 9, generator=gen(2)) ** 3
    for mass in (0.3, 0.6, 0.9):
        ours = mass_threshold(x, mass)
        for i in range(len(x)):
            assert torch.equal(ours[i].flatten(), dino_threshold(x[i].flatten(), mass))


def test_mass_threshold_keeps_ties_whole():
    x = torch.tensor([[3., 3., 3., 1.]]).reshape(1, 2, 2)
    assert mass_threshold(x, 0.6).tolist() == [[[True, True], [True, False]]]
    assert mass_threshold(torch.zeros(1, 3, 3), 0.6).all()
    with pytest.raises(InputError, match="mass"):
        mass_threshold(x, 0.0)


def test_iou_one_on_mask_zero_off_mask_nan_without_mask():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True; masks[1, 5:8, 0:2] = True
    on = masks[:, None].float() * torch.rand(3, 1, 1, 1, generator=gen(0)).add(0.1)
    off = (~masks)[:, None].float()
    maps = torch.cat([on, off], 1)                                   # head 0 on the mask, head 1 off it
    iou = saliency_iou(maps, masks)
    assert iou[:2, 0].tolist() == [1.0, 1.0] and iou[:2, 1].tolist() == [0.0, 0.0]
    assert iou[2].isnan().all()


def test_iou_upsamples_bilinearly_to_the_mask():
    m = torch.zeros(1, 4, 4); m[0, 1:3, 1:3] = 1
    mask = torch.zeros(1, 32, 32, dtype=torch.bool); mask[0, 8:24, 8:24] = True
    iou = saliency_iou(m[:, None], mask).item()
    assert 0.5 < iou < 1.0
    up = torch.nn.functional.interpolate(m[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    keep = mass_threshold(up, 0.6)[0, 0]
    assert iou == pytest.approx(float((keep & mask[0]).sum() / (keep | mask[0]).sum()))


# ------------------------------------------------------------------ accumulation and models
def test_accumulator_equals_per_image_functions_over_batches():
    g, p = (4, 4), 1
    batches = [[random_attention(b, 2, p, g, seed=10 * b + l) for l in range(3)] for b in (2, 3)]
    masks = [torch.rand(b, 16, 16, generator=gen(b)) > 0.6 for b in (2, 3)]
    acc = AttentionAccumulator(["a", "b", "c"], p, keep_mean_attention=True)
    for attn, m in zip(batches, masks): acc.update(attn, m)
    st = acc.result("x")
    assert st.n_images == 5 and st.labels == ["a", "b", "c"]
    for l in range(3):
        all_a = torch.cat([bt[l] for bt in batches])
        assert torch.allclose(st.distance[l], attention_distance(all_a, p).mean(0), atol=1e-6)
        assert torch.allclose(st.aaam[l], aligned_attention(all_a, p).mean(0), atol=1e-6)
        assert torch.allclose(st.cls_map[l], all_a[:, :, 0, p:].mean(0).reshape(2, 4, 4), atol=1e-6)
        assert torch.allclose(st.mean_attention[l], all_a.mean(0), atol=1e-6)
        iou = saliency_iou(all_a[:, :, 0, p:].reshape(5, 2, 4, 4), torch.cat(masks))
        assert torch.allclose(st.iou["cls"][:, l], iou, equal_nan=True)
        assert torch.allclose(st.patch_prefix_mass[l], all_a[:, :, p:, :p].sum(-1).mean((0, 2)), atol=1e-6)
        assert torch.allclose(st.cls_prefix_mass[l], all_a[:, :, 0, :p].sum(-1).mean(0), atol=1e-6)
    assert torch.allclose(st.aaam.sum((-2, -1)), torch.ones(3, 2), atol=1e-5)
    per_offset = st.aaam_per_offset()
    assert torch.allclose((per_offset * st.aaam_pairs).sum((-2, -1)), torch.full((3, 2), 16.0), atol=1e-4)
    best, head = st.best_iou("cls")
    assert torch.equal(best, st.iou_mean("cls").max(1).values) and head.shape == (3,)
    assert torch.allclose(st.query_map("b", 1, (2, 3)), st.mean_attention[1, 1, 1 + 2 * 4 + 3, 1:].reshape(4, 4))
    assert torch.allclose(st.query_map(0, None, "cls"), st.cls_map[0].mean(0))


def manual_attention(block, x):
    "softmax(q kᵀ / sqrt(d)) of a timm Block from its input tokens x."
    attn = block.attn
    y = block.norm1(x)
    b, n, c = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return (q * attn.scale @ k.transpose(-2, -1)).softmax(-1)


def test_collect_attention_on_fused_timm_vit_matches_hand_computed_attention():
    vit = tiny_vit(reg_tokens=2)
    assert all(b.attn.fused_attn for b in vit.blocks)
    images = torch.randn(4, 3, 32, 32, generator=gen(5))
    masks = torch.rand(4, 32, 32, generator=gen(6)) > 0.5
    st = collect_attention(vit, [dict(images=images, masks=masks)], progress=False)
    assert (st.n_prefix_tokens, st.grid, st.layers) == (3, (4, 4), ["blocks.0.attn:attn", "blocks.1.attn:attn"])
    with torch.no_grad():
        x0 = vit._pos_embed(vit.patch_embed(images))
        x0 = vit.norm_pre(vit.patch_drop(x0))
        a0 = manual_attention(vit.blocks[0], x0)
        a1 = manual_attention(vit.blocks[1], vit.blocks[0](x0))
    acc = AttentionAccumulator(st.layers, 3).update([a0, a1], masks).result()
    assert torch.allclose(st.distance, acc.distance, atol=1e-5)
    assert torch.allclose(st.cls_map, acc.cls_map, atol=1e-5)
    assert torch.allclose(st.iou_mean("mean"), acc.iou_mean("mean"), atol=1e-6)
    assert all(b.attn.fused_attn for b in vit.blocks)                      # restored
    for b in vit.blocks: b.attn.fused_attn = False
    unfused = collect_attention(vit, [dict(images=images, masks=masks)], progress=False)
    assert torch.allclose(st.distance, unfused.distance, atol=1e-6) and torch.allclose(st.aaam, unfused.aaam, atol=1e-6)


def test_batch_forms_give_the_same_stats_and_runs_are_deterministic():
    vit = tiny_vit()
    samples = noise_samples(6)
    cfg = input_config(vit)
    dicts = list(batches_from_samples(samples, 4, **cfg))
    a = collect_attention(vit, dicts, progress=False)
    b = collect_attention(vit, [samples[:4], samples[4:]], progress=False)
    c = collect_attention(vit, [(d["images"], d["masks"], d["labels"]) for d in dicts], progress=False)
    for other in (b, c):
        assert torch.equal(a.distance, other.distance) and torch.equal(a.aaam, other.aaam)
        assert torch.equal(a.iou["cls"], other.iou["cls"])
    plain = collect_attention(vit, [d["images"] for d in dicts], progress=False)
    assert plain.iou == {} and torch.equal(plain.distance, a.distance)
    with pytest.raises(InputError, match="batch of type"):
        collect_attention(vit, ["not a batch"], progress=False)
    with pytest.raises(InputError, match="no batches"):
        collect_attention(vit, [], progress=False)


def test_open_clip_vision_tower_and_no_class_token_models():
    from open_clip.transformer import VisionTransformer
    torch.manual_seed(0)
    v = VisionTransformer(32, 8, 32, 2, 2, 4.0, output_dim=16).eval()
    assert prefix_tokens(v) == 1
    assert block_attention_layers(v) == ["transformer.resblocks.0.attn:attn", "transformer.resblocks.1.attn:attn"]
    st = collect_attention(v, [torch.randn(2, 3, 32, 32, generator=gen(0))], progress=False)
    assert st.grid == (4, 4) and st.distance.shape == (2, 2)
    nocls = tiny_vit(class_token=False, global_pool="avg")
    assert prefix_tokens(nocls) == 0
    st0 = collect_attention(nocls, [dict(images=torch.randn(2, 3, 32, 32, generator=gen(1)),
                                         masks=torch.ones(2, 32, 32, dtype=torch.bool))], progress=False)
    assert st0.cls_map is None and list(st0.iou) == ["mean"]
    with pytest.raises(InputError, match="no class token"):
        plot_attention_grid(st0, kind="cls")


# ------------------------------------------------------------------ features, clustering, k-NN
def test_collect_features_pools_and_labels():
    vit = tiny_vit(reg_tokens=1)
    samples = noise_samples(5)
    f = collect_features(vit, batches_from_samples(samples, 2, **input_config(vit)), progress=False)
    assert f.layers == ["blocks.0", "blocks.1"] and f.labels.tolist() == [0, 1, 2, 0, 1]
    x = torch.cat([d["images"] for d in batches_from_samples(samples, 5, **input_config(vit))])
    with torch.no_grad():
        tokens = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
    assert torch.allclose(f.get("cls")[1], tokens[:, 0], atol=1e-5)
    assert torch.allclose(f.get("mean")[1], tokens[:, 2:].mean(1), atol=1e-5)     # registers left out
    assert torch.allclose(dense_features(vit, x)["blocks.1"].reshape(5, 16, -1), tokens[:, 2:], atol=1e-5)
    tr, te = f.split(3, seed=0)
    assert tr.n == 3 and te.n == 2 and sorted(tr.labels.tolist() + te.labels.tolist()) == sorted(f.labels.tolist())


def test_purity_against_a_loop():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1])
    c = np.array([1, 1, 1, 0, 0, 2, 2, 2, 0])
    best = sum(max(int(((c == k) & (y == j)).sum()) for j in set(y)) for k in set(c))
    assert purity_score(y, c) == best / len(y)
    assert purity_score([0, 0, 0, 0], [0, 1, 2, 3]) == 1.0          # one cluster per image: pure, however useless
    assert purity_score([0, 1, 2, 3], [0, 0, 0, 0]) == 0.25


def test_cluster_scores_perfect_and_noise():
    y = torch.arange(5).repeat_interleave(40)
    sep = torch.eye(5, 20)[y] * 8 + 0.1 * torch.randn(200, 20, generator=gen(1))
    s = cluster_scores(sep, y, seed=0)
    assert (s["purity"], s["nmi"], s["ari"]) == (1.0, 1.0, 1.0)
    noise = cluster_scores(torch.randn(200, 20, generator=gen(2)), y, seed=0)
    assert abs(noise["ari"]) < 0.05 and noise["nmi"] < 0.1 and noise["purity"] < 0.4
    assert abs(s["chance_ari"]) < 0.05 and s["chance_nmi"] < 0.1
    assert cluster_scores(sep, y, seed=3) == cluster_scores(sep, y, seed=3)
    with pytest.raises(InputError, match="unknown"):
        cluster_scores(sep, torch.full((200,), -1))


def test_cluster_by_layer_reports_every_metric_per_layer():
    y = torch.arange(3).repeat(20)
    feats = LayerFeatures(["l0", "l1"], {"cls": [torch.randn(60, 8, generator=gen(0)), torch.eye(3, 8)[y] + 0.01 * torch.randn(60, 8, generator=gen(1))]}, y)
    out = cluster_by_layer(feats, "cls", seed=0, progress=False)
    assert set(out) == {"purity", "nmi", "ari", "chance_purity", "chance_nmi", "chance_ari"}
    assert out["purity"][1] == 1.0 and out["purity"][0] < 0.7
    assert out["chance_nmi"][0] == out["chance_nmi"][1]


def test_knn_matches_loop_reference_separable_and_noise():
    g = gen(4)
    tr, te = torch.randn(50, 6, generator=g), torch.randn(20, 6, generator=g)
    ytr = torch.randint(0, 4, (50,), generator=g)
    assert torch.equal(knn_predict(tr, ytr, te, k=7, T=0.1, num_classes=4, batch_size=8), knn_reference(tr, ytr, te, 7, 0.1, 4))
    y = torch.arange(4).repeat_interleave(50)
    sep = torch.eye(4, 16)[y] * 5 + 0.3 * torch.randn(200, 16, generator=g)
    assert knn_classify(sep[::2], y[::2], sep[1::2], y[1::2]) == 1.0
    y5 = torch.arange(5).repeat(200)
    acc = knn_classify(torch.randn(1000, 32, generator=g), y5, torch.randn(1000, 32, generator=g), y5)
    assert abs(acc - 0.2) < 0.06
    f_tr = LayerFeatures(["a"], {"cls": [sep[::2]]}, y[::2])
    f_te = LayerFeatures(["a"], {"cls": [sep[1::2]]}, y[1::2])
    assert knn_by_layer(f_tr, f_te) == [1.0]


# ------------------------------------------------------------------ keypoints and warps
def test_patch_index_and_centres_round_trip():
    centres = patch_centres(torch.arange(12), (30, 40), (3, 4))
    assert centres[0].tolist() == [5.0, 5.0] and centres[-1].tolist() == [35.0, 25.0]
    assert torch.equal(patch_index(centres, (30, 40), (3, 4)), torch.arange(12))


def test_keypoint_transfer_identity_is_exact_at_patch_centres():
    f = torch.randn(5, 6, 16, generator=gen(0))
    kps = patch_centres(torch.arange(30), (50, 60), (5, 6))
    pred = keypoint_transfer(f, f, kps, (50, 60), (50, 60))
    assert torch.equal(pred, kps)
    assert pck(pred, kps, [0, 0, 60, 50]) == {0.1: 1.0, 0.05: 1.0, 0.01: 1.0}
    perm = torch.randperm(30, generator=gen(1))                   # target = permuted patches: the permutation is found
    trg = f.reshape(30, 16)[perm].reshape(5, 6, 16)
    pred = keypoint_transfer(f, trg, kps, (50, 60), (50, 60))
    assert torch.equal(pred, kps[torch.argsort(perm)])


def test_pck_threshold_uses_the_larger_box_side():
    gt = torch.tensor([[10.0, 10.0]])
    box = [0, 0, 40, 100]                                           # h = 100 > w = 40
    assert pck(gt + torch.tensor([[9.9, 0]]), gt, box) == {0.1: 1.0, 0.05: 0.0, 0.01: 0.0}
    assert pck(gt + torch.tensor([[0, 10.1]]), gt, box)[0.1] == 0.0


def test_warps_are_exact():
    img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    img[:, 4, 13] = 200
    assert torch.equal(warp_image(img, similarity_warp(20, translate=(-3, 5)))[0].nonzero(), torch.tensor([[9, 10]]))
    for angle in (90, 180, 270):
        out = warp_image(img, similarity_warp(20, angle=angle))
        (y, x), = out[0].nonzero().tolist()
        assert warp_points([[13.5, 4.5]], similarity_warp(20, angle=angle)).tolist() == [[x + 0.5, y + 0.5]]
    m = similarity_warp((20, 24), angle=23.0, scale=1.1, translate=(1.5, -2.0), perspective=(0.002, -0.001))
    pts = torch.tensor([[3.0, 4.0], [20.5, 11.25]])
    assert torch.allclose(warp_points(warp_points(pts, m), torch.linalg.inv(m)), pts.double(), atol=1e-9)
    blob = torch.zeros(3, 40, 40, dtype=torch.uint8); blob[:, 18:21, 10:13] = 255   # centre (11.5, 19.5)
    out = warp_image(blob, similarity_warp(40, angle=37.0, scale=1.2, translate=(2.0, -1.0)))
    (y, x) = divmod(int(out[0].argmax()), 40)
    wx, wy = warp_points([[11.5, 19.5]], similarity_warp(40, angle=37.0, scale=1.2, translate=(2.0, -1.0)))[0].tolist()
    assert abs(x + 0.5 - wx) <= 1 and abs(y + 0.5 - wy) <= 1
    mask = torch.zeros(20, 20, dtype=torch.bool); mask[2:6, 3:9] = True
    assert torch.equal(warp_image(mask, similarity_warp(20, translate=(4, 4))), torch.roll(mask, (4, 4), (0, 1)))


def test_warp_pairs_keypoints_follow_the_warp_and_are_deterministic():
    samples = noise_samples(4, size=32)
    pairs = warp_pairs(samples, seed=3, n_keypoints=12)
    again = warp_pairs(samples, seed=3, n_keypoints=12)
    assert len(pairs) == 4
    for p, q in zip(pairs, again):
        assert torch.equal(p.trg.image, q.trg.image) and torch.equal(p.trg.meta["keypoints"], q.trg.meta["keypoints"])
        m = torch.tensor(p.meta["warp"], dtype=torch.float64)
        ks, kt = p.src.meta["keypoints"].double(), p.trg.meta["keypoints"].double()
        assert torch.allclose(warp_points(ks, m), kt, atol=1e-4)
        assert p.src.masks[0][ks[:, 1].long(), ks[:, 0].long()].all()          # on the object
        assert p.trg.masks[0][kt[:, 1].long(), kt[:, 0].long()].all()          # visible after the warp
        assert p.trg.boxes.shape == (1, 4) and p.src.labels.tolist() == [samples[p.meta["id"]].meta["image_label"]]
    assert warp_pairs(samples, seed=4)[0].meta["warp"] != pairs[0].meta["warp"]


def test_warp_pairs_drop_keypoints_that_leave_the_object():
    "A one-pixel line rotated: nearest sampling of the warped mask misses some warped keypoints, which are dropped."
    m = torch.zeros(1, 32, 32, dtype=torch.bool); m[0, 16, 4:28] = True
    s = Sample(torch.zeros(3, 32, 32, dtype=torch.uint8), torch.tensor([[4., 16, 28, 17]]), torch.tensor([0]), m, dict(dataset="line", id=0))
    kept = 0
    for seed in range(5):
        for p in warp_pairs([s], seed=seed, n_keypoints=20, max_rotation=45, scale=(1, 1), translate=0.0, min_keypoints=1):
            kt = p.trg.meta["keypoints"]
            assert p.trg.masks[0][kt[:, 1].long(), kt[:, 0].long()].all()
            kept += len(kt)
    assert 0 < kept < 5 * 20
    assert warp_pairs([s], seed=0, translate=0.0, min_keypoints=30) == []


def test_keypoint_pck_identity_warp_finds_every_keypoints_own_patch():
    vit = tiny_vit()
    samples = noise_samples(3, size=32)
    pairs = warp_pairs(samples, seed=0, max_rotation=0, scale=(1, 1), translate=0.0)
    assert all(torch.equal(p.src.image, p.trg.image) for p in pairs)
    res = keypoint_pck(vit, pairs, batch_size=2, progress=False)
    assert res.errors.shape[0] == 2 and res.n_pairs == 3
    expected = []
    for p_idx, p in enumerate(pairs):
        kp = p.src.meta["keypoints"]
        own = patch_centres(patch_index(kp, 32, (4, 4)), 32, (4, 4))       # the centre of the keypoint's own patch
        e = (own - kp.double()).norm(dim=1) / 20                            # the object box is 16 wide, 20 high
        assert torch.allclose(res.errors[:, res.pair_index == p_idx], e.float().expand(2, -1), atol=1e-6)
        expected.append(e)
    expected = torch.cat(expected)
    for a in (0.1, 0.2, 0.3):
        assert res.pck(a).tolist() == pytest.approx([float((expected.float() <= a).double().mean())] * 2)
    assert res.pck(0.3).tolist() == [1.0, 1.0]                              # at most half a patch diagonal, 5.66 px / 20


def test_spair_adapter_with_the_example_tree(tmp_path):
    write_example("spair71k", tmp_path)
    pairs = spair_pairs(root=tmp_path)
    assert len(pairs) == 3 and all(isinstance(p, SamplePair) for p in pairs)
    assert [p.meta["category"] for p in spair_pairs(root=tmp_path, categories=["cat"])] == ["cat"]
    assert len(spair_pairs(root=tmp_path, limit=2)) == 2
    with pytest.raises(InputError, match="SPair-71k category"):
        spair_pairs(root=tmp_path, categories=["dragon"])
    vit = tiny_vit()
    res = keypoint_pck(vit, pairs, progress=False, name="tiny")
    assert res.errors.shape == (2, 9) and res.n_pairs == 3
    # one pair by hand: features at 32 x 32, predictions in the 40 x 32 original pixels, threshold from the 26 x 21 box
    p = pairs[0]
    x = torch.cat([d["images"] for d in batches_from_samples([p.src, p.trg], 2, mask_fn=None, **input_config(vit))])
    f = dense_features(vit, x)["blocks.1"]
    pred = keypoint_transfer(f[0], f[1], p.src.meta["keypoints"], p.src.size, p.trg.size)
    err = (pred - p.trg.meta["keypoints"].double()).norm(dim=1) / 26
    assert torch.allclose(res.errors[1, :3], err.float(), atol=1e-6)
    s = res.summary()
    assert set(s) >= {"pck@0.1", "pck@0.05", "pck@0.01", "pck_per_pair@0.1", "n_keypoints"} and s["n_keypoints"] == 9


# ------------------------------------------------------------------ plots and table
def test_plots_and_best_layer_table():
    import matplotlib.pyplot as plt
    acc = AttentionAccumulator(["blocks.0.attn:attn", "blocks.1.attn:attn"], 1)
    acc.update([random_attention(2, 3, 1, (4, 4), seed=s) for s in (0, 1)], torch.ones(2, 8, 8, dtype=torch.bool))
    st = acc.result("m")
    for kind in ("cls", "aaam", "aaam_offset"):
        fig = plot_attention_grid(st, kind=kind)
        assert len(fig.axes) == 6
        plt.close(fig)
    fig = plot_distance_scatter({"a": st, "b": st})
    assert len(fig.axes[0].collections) == 2 and len(fig.axes[0].collections[0].get_offsets()) == 6
    plt.close(fig)
    fig = plot_by_layer({"a": [0.1, 0.2], "b": [0.3, 0.1]}, "purity", chance={"a": [0.05, 0.05], "b": 0.1})
    assert len(fig.axes[0].lines) == 4          # two curves, two chance lines
    plt.close(fig)
    pair = warp_pairs(noise_samples(1), seed=0)[0]
    fig = plot_keypoint_pair(pair, pred=pair.trg.meta["keypoints"])
    plt.close(fig)
    rows = best_layer_table({"dino": {"knn": [0.2, 0.9, 0.5], "distance": [0.3, 0.1, 0.2]},
                             "mae": {"knn": [float("nan"), 0.4, 0.6]}})
    assert rows == [dict(model="dino", task="knn", best_layer=1, value=0.9), dict(model="dino", task="distance", best_layer=1, value=0.1),
                    dict(model="mae", task="knn", best_layer=2, value=0.6)]
