"""workbench.methods.cka against slow, explicit references: the U-statistic definition of unbiased HSIC, the centering-matrix
form of biased HSIC, and per-batch means computed one batch and one pair at a time."""
import importlib.util
import itertools
import math
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from workbench.methods.cka import (CKAAccumulator, CKAError, CKAResult, FeatureTap, collect_cka, gram_stack,
                                   hsic_cross, hsic_self, linear_cka, minibatch_cka, token_features, vit_taps)
from workbench.viz.figures import plot_cka
from workbench.core import InputError


# ------------------------------------------------------------------ slow references (numpy, float64)
def hsic1_ustat(x, y):
    "Unbiased HSIC as the U-statistic of Song et al. (2012): mean over ordered distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."
    K, L = x @ x.T, y @ y.T
    n, total, count = len(x), 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def hsic1_formula(x, y):
    "Unbiased HSIC, the closed form of the thesis written out with explicit matrices."
    n = len(x)
    K, L = x @ x.T, y @ y.T
    np.fill_diagonal(K, 0); np.fill_diagonal(L, 0)
    one = np.ones((n, 1))
    return (np.trace(K @ L) + (one.T @ K @ one).item() * (one.T @ L @ one).item() / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one.T @ K @ L @ one).item()) / (n * (n - 3))


def hsic0_formula(x, y):
    "Biased HSIC: tr(K H L H) / (n-1)^2 with the centering matrix H."
    n = len(x)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(x @ x.T @ H @ y @ y.T @ H) / (n - 1) ** 2


def cka_ref(batches_x, batches_y, hsic):
    "Minibatch CKA from per-batch HSICs, one batch at a time."
    xy = np.mean([hsic(a, b) for a, b in zip(batches_x, batches_y)])
    xx = np.mean([hsic(a, a) for a in batches_x])
    yy = np.mean([hsic(b, b) for b in batches_y])
    return xy / math.sqrt(xx * yy)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def xy():
    x = rand(40, 12, seed=1)
    y = torch.tanh(x @ rand(12, 9, seed=2)) + 0.3 * rand(40, 9, seed=3)
    return x, y


F64 = torch.float64      # the reference Gram dtype (the default is float32 products): exact comparisons use it


# ------------------------------------------------------------------ estimators
def test_ustatistic_equals_closed_form():
    x, y = rand(7, 3, seed=4).numpy(), rand(7, 5, seed=5).numpy()
    assert hsic1_ustat(x, y) == pytest.approx(hsic1_formula(x, y), rel=1e-10)


@pytest.mark.parametrize("unbiased,ref", [(True, hsic1_ustat), (False, hsic0_formula)])
def test_linear_cka_matches_reference(unbiased, ref):
    x = rand(8, 3, seed=6)
    y = x @ rand(3, 4, seed=7) + 0.5 * rand(8, 4, seed=8)
    xs, ys = x.numpy(), y.numpy()
    expect = ref(xs, ys) / math.sqrt(ref(xs, xs) * ref(ys, ys))
    assert linear_cka(x, y, unbiased) == pytest.approx(expect, rel=1e-10, abs=1e-12)


def test_hsic_values_match_reference(xy):
    x, y = xy
    a, b = gram_stack([x], gram_dtype=F64), gram_stack([y], gram_dtype=F64)
    assert float(hsic_cross(a, b)[0, 0]) == pytest.approx(hsic1_formula(x.numpy(), y.numpy()), rel=1e-10)
    assert float(hsic_self(a)[0]) == pytest.approx(hsic1_formula(x.numpy(), x.numpy()), rel=1e-10)
    a0, b0 = gram_stack([x], unbiased=False, gram_dtype=F64), gram_stack([y], unbiased=False, gram_dtype=F64)
    assert float(hsic_cross(a0, b0, False)[0, 0]) == pytest.approx(hsic0_formula(x.numpy(), y.numpy()), rel=1e-10)


@pytest.mark.parametrize("unbiased", [True, False])
def test_self_similarity_is_one(xy, unbiased):
    x, _ = xy
    assert linear_cka(x, x, unbiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x.float(), x.float(), unbiased) == pytest.approx(1.0, abs=1e-12)
    assert minibatch_cka(x, x, 10, unbiased, gram_dtype=F64) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_invariances(xy, unbiased):
    x, y = xy
    q, _ = torch.linalg.qr(rand(12, 12, seed=9))
    base = linear_cka(x, y, unbiased)
    assert linear_cka(x @ q, y, unbiased) == pytest.approx(base, abs=1e-10)          # orthogonal transform
    assert linear_cka(x * 123.0, y * 1e-3, unbiased) == pytest.approx(base, abs=1e-10)  # isotropic scaling
    assert linear_cka(x + 5.0, y - 2.0, unbiased) == pytest.approx(base, abs=1e-10)    # translation
    stretched = x * torch.linspace(0.05, 20, 12, dtype=torch.float64)                  # not isotropic
    assert abs(linear_cka(stretched, y, unbiased) - base) > 1e-2


def test_large_offset_does_not_cancel(xy):
    "A common offset 10^5 times the spread (a ViT residual stream's massive activations, worse) changes nothing."
    x, y = xy
    assert linear_cka(x + 1e5 * rand(12, seed=10), y - 1e5, True) == pytest.approx(linear_cka(x, y), abs=1e-8)
    acc = CKAAccumulator(1, 1, gram_dtype=F64).update([x[:20] + 1e5], [y[:20]]).update([x[20:] + 1e5], [y[20:]])
    assert float(acc.compute()[0, 0]) == pytest.approx(minibatch_cka(x, y, 20, gram_dtype=F64), abs=1e-8)


def test_gram_and_feature_routes_agree():
    "linear_cka works on Gram matrices for small n and in feature space for n >> d: the same estimator."
    x = rand(600, 5, seed=11)
    y = x[:, :3] @ rand(3, 4, seed=12) + rand(600, 4, seed=13)
    for unbiased in (True, False):
        acc = CKAAccumulator(["x"], ["y"], unbiased=unbiased, gram_dtype=F64).update([x], [y])
        assert linear_cka(x, y, unbiased) == pytest.approx(float(acc.compute()[0, 0]), abs=1e-12)


# ------------------------------------------------------------------ accumulator
def test_accumulator_is_mean_of_batch_hsic(xy):
    "Ragged batches too (16, 16, 8): every batch counts once in each mean."
    x, y = xy
    bx, by = [x[i:i + 16].numpy() for i in range(0, 40, 16)], [y[i:i + 16].numpy() for i in range(0, 40, 16)]
    for unbiased, hsic in ((True, hsic1_formula), (False, hsic0_formula)):
        acc = CKAAccumulator(1, 1, unbiased=unbiased, gram_dtype=F64)
        for a, b in zip(bx, by): acc.update([torch.from_numpy(a)], [torch.from_numpy(b)])
        assert float(acc.compute()[0, 0]) == pytest.approx(cka_ref(bx, by, hsic), rel=1e-10)
        assert minibatch_cka(x, y, 16, unbiased, gram_dtype=F64) == pytest.approx(cka_ref(bx, by, hsic), rel=1e-10)
        assert (acc.n_batches, acc.n_examples) == (3, 40)


def test_all_pairs_match_one_pair_at_a_time(xy):
    x, y = xy
    side_a = [x, y, x[:, :4] ** 2, torch.sin(3 * x)]                       # widths 12, 9, 4, 12
    side_b = [y, x @ rand(12, 30, seed=14), torch.relu(y)]
    cross = CKAAccumulator(["x", "y", "x2", "sin"], ["y", "proj", "relu"], gram_dtype=F64)
    within = CKAAccumulator(len(side_a), gram_dtype=F64)
    for i in range(0, 40, 10):
        cross.update([f[i:i + 10] for f in side_a], {"y": side_b[0][i:i + 10], "proj": side_b[1][i:i + 10],
                                                      "relu": side_b[2][i:i + 10]})
        within.update([f[i:i + 10] for f in side_a])
    m, w = cross.compute(), within.compute()
    assert m.shape == (4, 3) and w.shape == (4, 4) and m.dtype == torch.float64
    for i, a in enumerate(side_a):
        for j, b in enumerate(side_b):
            assert float(m[i, j]) == pytest.approx(minibatch_cka(a, b, 10, gram_dtype=F64), abs=1e-12)
        for j, b in enumerate(side_a):
            assert float(w[i, j]) == pytest.approx(minibatch_cka(a, b, 10, gram_dtype=F64), abs=1e-12)
    assert torch.equal(w, w.T) or torch.allclose(w, w.T, atol=1e-14)
    assert torch.allclose(w.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-12)
    res = cross.result("t")
    assert isinstance(res, CKAResult) and res.layers_b == ["y", "proj", "relu"] and res.n_batches == 4


def test_float32_grams_after_float64_centering(xy):
    "The default gram_dtype=float32 multiplies features already centered in float64: a huge offset still cancels exactly."
    x, y = xy
    feats = [x, y, torch.tanh(x)]
    exact, fast = CKAAccumulator(3, gram_dtype=F64), CKAAccumulator(3)
    assert fast.gram_dtype == torch.float32 and gram_stack([x]).k.dtype == torch.float64   # float32 products, float64 storage
    for i in range(0, 40, 20):
        exact.update([f[i:i + 20] for f in feats])
        fast.update([f[i:i + 20] + 1e5 for f in feats])
    assert torch.allclose(fast.compute(), exact.compute(), atol=1e-5)
    with pytest.raises(InputError, match="gram_dtype"): CKAAccumulator(3, gram_dtype=torch.float16)
    assert torch.get_float32_matmul_precision() == "highest"


def test_deterministic(xy):
    x, y = xy
    feats = [x.float(), y.float(), (x[:, :9] * y).float()]
    runs = []
    for _ in range(2):
        acc = CKAAccumulator(3)
        for i in range(0, 40, 8): acc.update([f[i:i + 8] for f in feats])
        runs.append(acc.compute())
    assert torch.equal(runs[0], runs[1])
    assert linear_cka(x, y) == linear_cka(x, y)


def test_reset(xy):
    x, y = xy
    acc = CKAAccumulator(2).update([x, y])
    first = acc.compute()
    acc.reset()
    with pytest.raises(CKAError, match="no batches"): acc.compute()
    assert torch.equal(acc.update([x, y]).compute(), first)


# ------------------------------------------------------------------ errors, never NaN
def test_constant_features_raise(xy):
    x, y = xy
    with pytest.raises(CKAError, match="CKA undefined for X: constant features"):
        linear_cka(torch.full((40, 3), 7.25), y)
    with pytest.raises(CKAError, match="CKA undefined for Y: constant features"):
        linear_cka(x, torch.zeros(40, 5))
    with pytest.raises(CKAError, match="Y: constant features"):                 # feature-space route (n >> d)
        linear_cka(rand(500, 2, seed=15), torch.ones(500, 1) * 3)
    acc = CKAAccumulator(["a", "b"], ["c"]).update([x, torch.ones(40, 2)], [torch.zeros(40, 4)])
    with pytest.raises(CKAError) as e: acc.compute()
    assert "b of feats_a: constant features" in str(e.value) and "c of feats_b: constant features" in str(e.value)
    assert isinstance(e.value, InputError)


def test_too_few_examples_raise(xy):
    x, y = xy
    with pytest.raises(CKAError, match="at least 4"): linear_cka(x[:3], y[:3])
    assert math.isfinite(linear_cka(x[:3], y[:3], unbiased=False))
    with pytest.raises(CKAError, match="at least 2"): linear_cka(x[:1], y[:1], unbiased=False)
    with pytest.raises(CKAError, match="batch of 2 examples is too small"): minibatch_cka(x[:10], y[:10], 4, gram_dtype=F64)   # 4, 4, 2
    with pytest.raises(CKAError, match="at least 4"): CKAAccumulator(1).update([x[:3]])


def test_input_mismatches_raise(xy):
    x, y = xy
    with pytest.raises(CKAError, match="X has 40 rows, Y has 39"): linear_cka(x, y[:39])
    with pytest.raises(CKAError, match="every layer must see the same batch"): CKAAccumulator(2).update([x, y[:30]])
    with pytest.raises(CKAError, match="feats_a has 40 examples, feats_b has 30"): CKAAccumulator(1, 1).update([x], [y[:30]])
    with pytest.raises(CKAError, match="2 feature tensors for 3 layers"): CKAAccumulator(3).update([x, y])
    with pytest.raises(CKAError, match="feats_b missing"): CKAAccumulator(1, 1).update([x])
    with pytest.raises(CKAError, match="within-model"): CKAAccumulator(1).update([x], [y])
    with pytest.raises(CKAError, match="no features for layer"): CKAAccumulator(["p", "q"]).update({"p": x})
    with pytest.raises(CKAError, match="duplicate"): CKAAccumulator(["p", "p"])


def test_nonfinite_features_raise(xy):
    x, y = xy
    bad = x.clone(); bad[3, 2] = float("inf")
    with pytest.raises(CKAError, match="non-finite"): linear_cka(bad, y)
    bad[3, 2] = float("nan")
    with pytest.raises(CKAError, match="a1 of feats_a: non-finite"): CKAAccumulator(2, 1).update([x, bad], [y]).compute()


# ------------------------------------------------------------------ tokens, models, plots
def test_token_features():
    t = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)
    assert torch.equal(token_features(t, "cls"), t[:, 0])
    assert torch.equal(token_features(t, "mean"), t[:, 1:].mean(1))
    assert torch.equal(token_features(t, "mean", num_prefix_tokens=2), t[:, 2:].mean(1))
    assert token_features(t, "spatial").shape == (2, 20)
    with pytest.raises(InputError, match="valid: cls, mean, spatial"): token_features(t, "max")
    with pytest.raises(CKAError, match="B, prefix"): token_features(t[:, 0], "cls")
    with pytest.raises(CKAError, match="class token"): token_features(t, "cls", num_prefix_tokens=0)


@pytest.fixture(scope="module")
def tiny_vits():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3).eval()
    return make(), make()


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(12, 3, 32, 32, generator=g) for _ in range(2)]


def test_collect_cka_matches_manual_accumulation(tiny_vits):
    vit, _ = tiny_vits
    images = _images()
    res = collect_cka(vit, [(im, torch.zeros(12)) for im in images], vit_taps(vit, "blocks", "mean"))
    acc = CKAAccumulator(3)
    for im in images:
        with torch.inference_mode():
            x = vit.patch_embed(im)
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
            outs = []
            for blk in vit.blocks:
                x = blk(x); outs.append(token_features(x, "mean"))
        acc.update(outs)
    assert res.layers_a == ["blocks 0", "blocks 1", "blocks 2"] and res.n_examples == 24
    assert torch.allclose(res.matrix, acc.compute(), atol=1e-10)


def test_collect_cka_cross_model_and_paths(tiny_vits):
    vit, vit2 = tiny_vits
    images = _images()
    last = [FeatureTap("blocks.2", tokens=m, label=f"last {m}") for m in ("cls", "mean", "spatial")]
    cross = collect_cka(vit, images, last, vit2, last)
    assert cross.matrix.shape == (3, 3) and torch.isfinite(cross.matrix).all()
    same = collect_cka(vit, images, last, vit, last)           # one traced pass serves both sides
    assert torch.allclose(same.matrix.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-12)
    paths = collect_cka(vit, images, vit_taps(vit, "skip", "mean"), vit, vit_taps(vit, "attn", "mean"))
    blocks = collect_cka(vit, images, vit_taps(vit, "blocks", "mean"), vit, vit_taps(vit, "attn", "mean"))
    assert torch.allclose(paths.matrix[1:], blocks.matrix[:-1], atol=1e-10)   # skip into block i+1 = output of block i
    with pytest.raises(CKAError, match="skip 0: constant features"):          # CLS entering block 0 is image-independent
        collect_cka(vit, images, vit_taps(vit, "skip", "cls"))


def test_vit_taps_rejects_non_vit():
    with pytest.raises(InputError, match="not a timm ViT"): vit_taps(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="valid: blocks, skip, attn, mlp"): vit_taps(torch.nn.Linear(2, 2), "ffn")


def test_plot_cka():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = torch.tensor([[1.0, 0.25], [0.5, 1.1]])
    fig = plot_cka(m, ["a0", "a1"], ["b0", "b1"], title="t")
    ax = fig.axes[0]
    assert ax.images[0].get_clim() == (0.0, 1.0) and ax.get_title() == "t"
    assert sorted(t.get_text() for t in ax.texts) == ["0.25", "0.50", "1.00", "1.10"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b0", "b1"]
    plt.close(fig)
    with pytest.raises(CKAError, match="2 × 3 labels"): plot_cka(m, ["a0", "a1"], ["b0", "b1", "b2"])
    with pytest.raises(CKAError, match="NaN"): plot_cka(torch.tensor([[float("nan")]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accumulator_on_cuda_matches_cpu(xy):
    x, y = xy
    feats = [x.float(), y.float()]
    cpu = CKAAccumulator(2).update(feats).compute()
    gpu = CKAAccumulator(2, device="cuda").update([f.cuda() for f in feats]).compute()
    assert gpu.device.type == "cpu" and torch.allclose(cpu, gpu, atol=1e-10)


# ------------------------------------------------------------------ benchmark script (no peer needed)
def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cka", ROOT / "benchmarks" / "bench_cka.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_replay_feeds_same_features():
    bench = _bench_module()
    feats = bench.synthetic_features(40, layers=3, width=16)
    assert feats.shape == (3, 40, 16) and feats.dtype == torch.float32
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(40)), batch_size=10)
    ours = bench.run_ours(feats, loader, torch.device("cpu"))          # the benchmark's "ours": the float64 reference
    acc = CKAAccumulator(3, gram_dtype=F64)
    for i in range(0, 40, 10): acc.update(list(feats[:, i:i + 10]))
    assert torch.equal(ours, acc.compute())


def test_bench_without_peer_exits_nonzero(monkeypatch, capsys):
    bench = _bench_module()
    monkeypatch.setattr(bench, "peer_version", lambda peer, path: None)
    assert bench.main(["--n", "40", "--batch", "10", "--vit-n", "0", "--peer", "torch_cka"]) == 2
    assert "peer implementation(s) missing: torch_cka" in capsys.readouterr().err
