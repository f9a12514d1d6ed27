"""workbench.viz.browsers.query driven through its widgets: tiny random-weight CLIPs (a ModifiedResNet tower and a ViT
tower) on object-world images. What the explorer shows is checked against direct `score_cam` calls; its cache, the
upload path and its errors are exercised."""
import matplotlib
matplotlib.use("Agg")
import pytest
import torch
import io

from PIL import Image

from workbench.core import InputError, seeded
from workbench.data.worlds import ObjectWorld
from workbench.methods.score_cam import score_cam
from workbench.models.clip import small_clip
from workbench.viz.browsers.query import QueryExplorer, decode_upload, parse_queries

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG"


def tiny(tower: str, size: int = 64, seed: int = 0):
    with seeded(seed):
        layers = (1, 1, 1, 1) if tower == "resnet" else 2
        width = 8 if tower == "resnet" else 32
        return small_clip(image_size=size, patch_size=8, vision_width=width, vision_layers=layers, vision_head_width=8,
                          text_width=32, text_heads=2, text_layers=1, context_length=16, embed_dim=32).eval()


@pytest.fixture(scope="module")
def setup():
    world = ObjectWorld(size=64, seed=3, diversity=0.5)
    # random weights: whether a channel beats the blank baseline hardly depends on the query; this seed keeps channels
    towers = {"cnn": tiny("resnet", seed=1), "vit": tiny("vit"), "cnn32": tiny("resnet", size=32)}
    return world, towers


def explorer(setup, **kw):
    world, towers = setup
    kw = dict(dict(queries="tree, car", n_images=4, layer="visual.layer2"), **kw)
    return QueryExplorer(towers, world, **kw)


def test_maps_are_score_cams_own(setup):
    world, towers = setup
    qe = explorer(setup, weighting="softmax", temperature=0.1)
    res = qe.compute()
    img = world[0].image
    direct = score_cam(towers["cnn"], img[None].repeat(2, 1, 1, 1), ["tree", "car"], layer="visual.layer2", weighting="softmax",
                       temperature=0.1)
    torch.testing.assert_close(res.maps, direct.maps)
    assert res.meta["absent"] == direct.meta["absent"] and res.meta["queries"] == ["tree", "car"]
    rows = qe.summary()
    assert [r["query"] for r in rows] == ["tree", "car"]
    for j, r in enumerate(rows):                           # the top channels are the largest weights, with their scores
        w, s = direct.meta["weights"][j], direct.meta["scores"][j]
        assert r["absent"] == direct.meta["absent"][j]
        if r["absent"]:
            assert r["top"] == [] and r["kept"] == 0; continue
        k0, w0, s0 = r["top"][0]
        assert w0 == pytest.approx(float(w.max())) and s0 == pytest.approx(float(s[k0]))
        assert r["kept"] == int((s > direct.meta["baseline"][j]).sum()) and r["channels"] == s.numel()
    assert not all(r["absent"] for r in rows)
    assert qe.image.value[:4] == PNG and "tree" in qe.info.value and "S_b" in qe.info.value


def test_ground_truth_is_the_named_class(setup):
    world, _ = setup
    qe = explorer(setup)
    s = world[0]
    present = s.class_names[int(s.labels[0])]
    missing = next(c for c in s.class_names if not (s.labels == s.class_names.index(c)).any())
    qe.queries.value = f"{present}, {missing}, zebra"
    rows = {r["query"]: r for r in qe.summary()}
    assert rows[present]["n_gt"] == int((s.labels == s.class_names.index(present)).sum()) >= 1
    assert 0 <= rows[present]["best_iou"] <= 1
    assert rows[missing]["n_gt"] == 0 and rows[missing]["best_iou"] is None
    assert rows["zebra"]["n_gt"] is None
    assert "not in the image" in qe.info.value and "no ground truth" in qe.info.value


def test_cache_counts_score_cam_calls(setup):
    qe = explorer(setup)
    assert qe.n_runs == 1
    qe.threshold.value = 0.3; qe.largest.value = True          # boxes only: no new run
    assert qe.n_runs == 1
    qe.weighting.value = "increase"; assert qe.n_runs == 2
    qe.temperature.value = 0.01; assert qe.n_runs == 2           # the temperature only matters for softmax
    assert qe.temperature.disabled
    qe.weighting.value = "softmax"; assert qe.n_runs == 3
    qe.temperature.value = 0.1; assert qe.n_runs == 4
    qe.index.value = 1; assert qe.n_runs == 5
    qe.index.value = 0; assert qe.n_runs == 5                     # seen before
    qe.queries.value = "tree,  car ,"; assert qe.n_runs == 5     # the same queries, written differently


def test_towers_switch_layers_and_sources(setup):
    qe = explorer(setup)
    assert list(qe.layer.options) == [f"visual.layer{i}" for i in range(1, 5)] and list(qe.source.options) == ["activations"]
    qe.tower.value = "vit"
    assert qe.layer.value == "visual.transformer.resblocks.1" and qe.source.value == "maskclip"
    assert set(qe.source.options) == {"maskclip", "activations", "qkv_pca"}
    assert qe.compute().layer == "maskclip:visual.transformer.resblocks.1" and qe.image.value[:4] == PNG
    qe.source.value = "qkv_pca"; qe.layer.value = "visual.transformer.resblocks.0"
    assert qe.compute().meta["source"] == "qkv_pca"


def test_absent_query_is_shown(setup):
    # at 32 px the CNN's layer4 is a 1 × 1 grid: every channel map is constant, none is forwarded, none beats the baseline
    qe = explorer(setup, tower="cnn32", layer="visual.layer4")
    assert all(r["absent"] for r in qe.summary())
    assert "absent" in qe.info.value and qe.image.value[:4] == PNG
    qe.layer.value = "visual.layer1"
    assert not all(r["absent"] for r in qe.summary())


def test_upload(setup):
    world, _ = setup
    qe = explorer(setup)
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO(); Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG"); data = buf.getvalue()
    qe._on_upload(({"name": "street.png", "content": memoryview(data)},))          # what ipywidgets 8's FileUpload holds
    assert qe.index.value == qe.index.max == 4 and qe.entries[4]["name"] == "street.png"
    x = qe.entries[4]["image"]
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    torch.testing.assert_close(x, decode_upload(data, 64))
    assert qe.image.value[:4] == PNG and "no ground truth" in qe.info.value
    qe._on_upload(({"name": "notes.txt", "content": memoryview(b"hello")},))
    assert "notes.txt" in qe.info.value and qe.image.value == b"" and qe.index.max == 4
    with pytest.raises(InputError, match="PNG, JPEG"): decode_upload(b"hello", 64, "notes.txt")


def test_bad_input(setup):
    world, towers = setup
    qe = explorer(setup)
    qe.queries.value = " , "
    assert "empty" in qe.info.value and qe.image.value == b""
    with pytest.raises(InputError, match="empty"): qe.compute()
    qe.queries.value = "tree"; qe.template.value = "a photo"
    assert "{label}" in qe.info.value and qe.image.value == b""
    with pytest.raises(InputError, match="tower 'resnet'; valid: cnn, vit, cnn32"): QueryExplorer(towers, world, tower="resnet")
    with pytest.raises(InputError, match="layer 'visual.layer9'"): QueryExplorer(towers, world, layer="visual.layer9")
    with pytest.raises(InputError, match="images"): QueryExplorer(towers, [])
    with pytest.raises(InputError, match=r"images\[0\]"): QueryExplorer(towers, [torch.zeros(3, 8, 8)])
    assert parse_queries("a, b ,, c") == ["a", "b", "c"]


def test_layout_natural_image_and_labels_fit(setup):
    qe = explorer(setup)
    assert (qe.image.layout.align_self, qe.image.layout.width) == ("flex-start", None)
    long = [w for w in (qe.index, qe.queries, qe.template, qe.tower, qe.layer, qe.source, qe.weighting, qe.temperature, qe.threshold)
            if len(w.description) > 10]                          # ipywidgets' label column holds about ten characters
    assert long == [qe.temperature] and qe.temperature.style.description_width == "initial"
