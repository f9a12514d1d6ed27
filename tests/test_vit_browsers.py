"""workbench.viz.browsers.vit driven through its widgets: tiny random timm ViTs on object-world images; every number the
browsers show is checked against the analysis functions or a direct trace of the model."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import timm
import torch

from workbench.methods.cka import CKAAccumulator, collect_cka, vit_taps
from workbench.core import InputError
from workbench.models.hooks import Trace
from workbench.models.vits import batches_from_samples, input_config
from workbench.methods.attention import collect_attention
from workbench.models.transforms import prepare_images
from workbench.viz.browsers.vit import AttentionBrowser, ByLayerPanel, CKABrowser, as_images, by_layer_panel
from workbench.methods.attention import image_attention
from workbench.viz.figures import plot_cka_grid
from workbench.data.worlds import ObjectWorld, foreground_mask

PNG = b"\x89PNG"


def tiny_vit(seed, heads=2, reg_tokens=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=32,
                             num_heads=heads, reg_tokens=reg_tokens, num_classes=0).eval()


@pytest.fixture(scope="module")
def setup():
    world = ObjectWorld(size=64, seed=1)
    samples = [world[i] for i in range(8)]
    models = {"A": tiny_vit(0, heads=2), "B": tiny_vit(1, heads=4, reg_tokens=1)}
    a = models["A"]
    stats = {"A": collect_attention(a, batches_from_samples(samples, 4, **input_config(a)), progress=False, name="A")}
    return samples, models, stats


def first_image(fig):
    return next(ax.images[-1] for ax in fig.axes if ax.images)


def test_attention_browser_sources_views_and_numbers(setup):
    samples, models, stats = setup
    b = AttentionBrowser(models, samples, stats)
    assert b.source.value == "dataset average" and b.image.value[:4] == PNG
    assert "dataset average of 8 images" in b.info.value
    test_info = b.info.value
    b.layer.value = 1
    assert b.info.value != test_info and "blocks.1.attn:attn" in b.info.value
    # dataset average, head 1: the drawn map is the mean CLS map of that head
    b.head.value = 1
    fig = b.figure()
    np.testing.assert_allclose(first_image(fig).get_array(), stats["A"].cls_map[1, 1].numpy(), rtol=1e-6)
    plt.close(fig)
    dataset_png = b.image.value

    # one image: its CLS map equals the attention traced directly from the model
    b.source.value = "image"; b.index.value = 5
    assert "image 5" in b.info.value and b.image.value[:4] == PNG and b.image.value != dataset_png
    cfg = input_config(models["A"])
    x = prepare_images([samples[5].image], cfg["size"], cfg["mean"], cfg["std"])
    with torch.no_grad(), Trace(models["A"], ["blocks.1.attn:attn"]) as tr:
        models["A"](x)
    direct = tr["blocks.1.attn:attn"].output[0, 1, 0, 1:].reshape(4, 4)
    fig = b.figure()
    np.testing.assert_allclose(first_image(fig).get_array(), direct.numpy(), rtol=1e-5, atol=1e-7)
    assert len(fig.axes) == 3      # overlay, map, colour bar
    plt.close(fig)
    one = b.image_stats("A", 5)
    assert one.n_images == 1 and b.image_stats("A", 5) is one           # cached
    assert f"{np.nanmean(one.iou['cls'][:, 1, 1].numpy()):.3f}" in b.info.value   # this image's IoU for layer 1, head 1

    # a patch token query: row i, column j of the grid
    b.query.value = "token"; b.row.value, b.col.value = 2, 3
    assert "token (2, 3)" in b.info.value and not b.row.disabled
    fig = b.figure()
    np.testing.assert_allclose(first_image(fig).get_array(), one.query_map(1, 1, (2, 3)).numpy())
    plt.close(fig)

    # the mean over heads
    b.head.value = "mean"
    fig = b.figure()
    np.testing.assert_allclose(first_image(fig).get_array(), one.query_map(1, None, (2, 3)).numpy(), rtol=1e-6)
    plt.close(fig)

    # AAAM view
    b.view.value = "AAAM"; b.head.value = 0
    assert b.image.value[:4] == PNG
    fig = b.figure()
    np.testing.assert_allclose(first_image(fig).get_array(), one.aaam[1, 0].numpy())
    plt.close(fig)

    # distance view: one dot per head and layer, the chosen head ringed
    b.view.value = "distance per head"
    fig = b.figure()
    dots, ring = fig.axes[0].collections
    np.testing.assert_allclose(np.sort(dots.get_offsets()[:, 1]), np.sort(one.distance.flatten().numpy()), rtol=1e-6)
    np.testing.assert_allclose(ring.get_offsets()[0], [1, one.distance[1, 0].item()], rtol=1e-6)
    plt.close(fig)
    b.source.value = "dataset average"
    fig = b.figure()
    np.testing.assert_allclose(np.sort(fig.axes[0].collections[0].get_offsets()[:, 1]),
                               np.sort(stats["A"].distance.flatten().numpy()), rtol=1e-6)
    plt.close(fig)


def test_attention_browser_model_switch_and_messages(setup):
    samples, models, stats = setup
    b = AttentionBrowser(models, samples, stats)
    b.model.value = "B"                    # no dataset stats for B: falls back to one image
    assert b.source.value == "image" and b.image.value[:4] == PNG
    assert [v for _, v in b.head.options] == ["mean", 0, 1, 2, 3]
    assert b.image_stats("B", 0).n_prefix_tokens == 2
    b.source.value = "dataset average"     # asked for anyway: a message, no picture
    assert "no dataset statistics for model 'B'" in b.info.value and b.image.value == b""
    b.model.value = "A"; b.source.value = "dataset average"
    assert b.head.value == "mean" and [v for _, v in b.head.options] == ["mean", 0, 1]
    b.query.value = "token"                # the dataset stats were collected without the mean attention
    assert "keep_mean_attention=True" in b.info.value and b.image.value == b""
    b.query.value = "CLS"
    assert b.image.value[:4] == PNG


def test_attention_browser_tensor_images_and_errors(setup):
    samples, models, stats = setup
    images = torch.stack([s.image for s in samples[:3]])
    b = AttentionBrowser({"A": models["A"]}, images, cache_size=2)
    assert b.source.value == "image" and "IoU</td><td>no masks" in b.info.value
    for i in range(3): b.index.value = i
    assert len(b._cache) == 2
    masks = [foreground_mask(s) for s in samples[:3]]
    b = AttentionBrowser({"A": models["A"]}, images, masks=masks)
    assert "IoU (cls map" in b.info.value
    st = image_attention(models["A"], images[0].float() / 255, masks[0])
    assert st.n_images == 1 and st.mean_attention is not None
    with pytest.raises(InputError, match="stats for unknown model"): AttentionBrowser({"A": models["A"]}, images, {"C": stats["A"]})
    with pytest.raises(InputError, match="2 masks for 3 images"): as_images(images, masks[:2])
    with pytest.raises(InputError, match="expected"): as_images(torch.zeros(2, 1, 8, 8))


def test_cka_browser_shared_scale(setup):
    samples, models, _ = setup
    a = models["A"]
    x = prepare_images(torch.stack([s.image for s in samples]), 32)
    within = collect_cka(a, [x[:4], x[4:]], vit_taps(a, "blocks", "mean"), title="A: blocks × blocks")
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 5, generator=g)
    cross = CKAAccumulator(["m1", "m2", "m3"]).update([f, f + 0.5 * torch.randn(8, 5, generator=g), torch.randn(8, 7, generator=g)]).result("models")
    b = CKABrowser({"within": within, "cross": cross})
    assert b.image.value[:4] == PNG and "2 × 2" in b.info.value
    fig = b.figure()
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0) and len(fig.axes[0].texts) == 4
    plt.close(fig)
    png = b.image.value
    b.pick.value = "cross"
    assert "3 × 3" in b.info.value and b.image.value != png
    b.layout.value = "all"
    assert b.pick.disabled
    fig = b.figure()
    clims = [ax.images[0].get_clim() for ax in fig.axes if ax.images]
    assert clims == [(0.0, 1.0)] * 2
    assert sorted(len(ax.texts) for ax in fig.axes if ax.images) == [4, 9]
    plt.close(fig)
    fig = plot_cka_grid({"within": within, "cross": cross}, ncols=1)
    assert len([ax for ax in fig.axes if ax.images]) == 2
    plt.close(fig)
    s = cross.summary()
    assert s["layers_a"] == ["m1", "m2", "m3"] and len(s["matrix"]) == 3 and s["n_examples"] == 8


def test_by_layer_panel_switches_metric():
    values = {"distance": {"A": [0.2, 0.3, 0.4], "B": [0.5, 0.4, 0.3]},
              "purity": {"A": [0.3, 0.5, 0.6], "B": [0.2, 0.2, 0.4]}}
    chance = {"purity": {"A": [0.15] * 3, "B": 0.15}}
    p = by_layer_panel(values, chance, ylabels={"purity": "k-means purity"}, labels=["0", "1", "2"])
    assert isinstance(p, ByLayerPanel) and p.image.value[:4] == PNG
    fig = p.figure()
    assert fig.axes[0].get_ylabel() == "distance" and len(fig.axes[0].lines) == 2
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), [0.5, 0.4, 0.3])
    plt.close(fig)
    png = p.image.value
    p.metric.value = "purity"
    assert p.image.value[:4] == PNG and p.image.value != png
    fig = p.figure()
    assert fig.axes[0].get_ylabel() == "k-means purity" and len(fig.axes[0].lines) == 4   # two curves, two chance lines
    plt.close(fig)
    p.models.value = ("B",)
    fig = p.figure()
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
    p.chance["purity"] = {"A": 0.1, "B": 0.15, "noise": 0.12}      # a named baseline stays when a model is left out
    fig = p.figure()
    lines = fig.axes[0].lines
    assert (len(lines), lines[0].get_label(), lines[-1].get_label()) == (3, "B", "noise (chance)")
    assert lines[-1].get_ydata()[0] == 0.12
    plt.close(fig)
    p.models.value = ()
    assert p.image.value == b""
    with pytest.raises(InputError, match="chance for unknown metric"): by_layer_panel(values, {"iou": 0.1})


def test_images_keep_their_natural_size(setup):
    # in a VBox an Image is stretched to the cell's width, in an HBox to the row's height, unless it aligns itself
    samples, models, stats = setup
    x = prepare_images(torch.stack([s.image for s in samples]), 32)
    within = collect_cka(models["A"], [x[:4], x[4:]], vit_taps(models["A"], "blocks", "mean"))
    panel = by_layer_panel({"distance": {"A": [0.2, 0.3]}})
    for b in (AttentionBrowser(models, samples, stats), CKABrowser({"within": within}), panel):
        assert (b.image.layout.align_self, b.image.layout.width, b.image.layout.height) == ("flex-start", None, None), type(b).__name__
        assert b.image.value[:4] == PNG


def test_callbacks_from_two_threads_do_not_interleave(setup):
    # JupyterLab 4.6 sends widget messages to a kernel subshell and ipykernel 7 routes some back to the main shell, so two
    # callbacks can run at once; two browsers over one model then traced it at the same time: each Trace's hooks saw the
    # other's forward pass (wrong maps, or a foreign StopForward that ended it). Here both passes meet before the last
    # block and the later one goes first, which interleaves them every time unless the browsers serialize their callbacks.
    import threading
    import time
    samples, models, _ = setup
    model = tiny_vit(0)
    seq = [[0, 1, 2], [3, 4, 5]]
    def drive(b, idx, errors):
        try:
            for i in idx: b.index.value = i % len(samples)
        except Exception as e: errors.append(repr(e))
    reference = []
    for idx in seq:                                              # one browser at a time: what each should show
        b = AttentionBrowser({"A": model}, samples, cache_size=1); drive(b, idx, [])
        reference.append((b.image.value, b.info.value))
    meet = threading.Barrier(2, timeout=0.5)
    def wait_for_the_other(*_):
        try:
            if meet.wait() == 0: time.sleep(0.3)                 # the first to arrive lets the other run its last block first
        except threading.BrokenBarrierError: pass                # serialized: nobody comes; later passes do not wait
    pause = model.blocks[-1].register_forward_pre_hook(wait_for_the_other)
    browsers = [AttentionBrowser({"A": model}, samples, cache_size=1) for _ in seq]   # every image traced anew
    errors = []
    threads = [threading.Thread(target=drive, args=(b, idx, errors)) for b, idx in zip(browsers, seq)]
    try:
        for t in threads: t.start()
        for t in threads: t.join()
    finally: pause.remove()
    assert not errors, errors[:3]
    assert [(b.image.value, b.info.value) for b in browsers] == reference
