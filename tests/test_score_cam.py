"""workbench.methods.score_cam against pytorch-grad-cam's ScoreCAM, the peer its "gradcam" weighting reproduces, and its
other guarantees on CLIPs with random weights. RN50 at 224 px is checked in benchmarks/bench_scorecam.py (minutes on a CPU),
whose pytorch-grad-cam wrapper these tests share."""
import importlib.util

import pytest
import torch

from conftest import ROOT
from workbench.core import seeded
from workbench.methods.score_cam import as_scorer, query_embedding, score_cam

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_clip(tower: str, seed: int = 0, width: int = 8):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg
    vis = (CLIPVisionCfg(layers=(1, 1, 1, 1), width=width, head_width=8, image_size=64) if tower == "resnet"
           else CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=64))
    with seeded(seed):
        m = CLIP(32, vis, CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
    set_model_preprocess_cfg(m, dict(size=64, mode="RGB", mean=(0.48145466, 0.4578275, 0.40821073),
                                     std=(0.26862954, 0.26130258, 0.27577711), interpolation="bicubic", resize_mode="shortest",
                                     fill_color=0))
    return m.eval()


def _bench():
    "benchmarks/bench_scorecam.py: its pytorch-grad-cam wrapper (image tower → embedding, cosine target) and Pearson r."
    spec = importlib.util.spec_from_file_location("bench_scorecam", ROOT / "benchmarks" / "bench_scorecam.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


def gradcam_scorecam(clip, images, query, layer):
    pytest.importorskip("pytorch_grad_cam")
    sc = as_scorer(clip)
    text = query_embedding(sc, [query])[0]
    return bench.gradcam_maps(clip, sc.preprocess(images), [text] * len(images), layer)


@pytest.mark.parametrize("layer", ["visual.layer3", "visual.layer4"])
def test_gradcam_weighting_reproduces_pytorch_grad_cam(layer):
    clip = tiny_clip("resnet")
    imgs = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    theirs = gradcam_scorecam(clip, imgs, "fish", layer)
    ours = score_cam(clip, imgs, "fish", layer=layer, weighting="gradcam")
    r = torch.tensor(bench.pearson(ours.upsampled(theirs.shape[-2:]), theirs))
    assert (r >= 0.999).all(), r
    # the default weighting is a different method: its maps are not pytorch-grad-cam's
    assert not torch.allclose(score_cam(clip, imgs, "fish", layer=layer).upsampled(theirs.shape[-2:]), theirs, atol=1e-3)


def test_same_seed_same_maps_and_vit_sources_differ():
    clip = tiny_clip("vit")
    imgs = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    a = score_cam(clip, imgs, "car", source="maskclip")
    b = score_cam(tiny_clip("vit"), imgs, "car", source="maskclip")
    assert torch.equal(a.maps, b.maps)
    c = score_cam(clip, imgs, "car", source="qkv_pca")
    assert not torch.allclose(a.maps, c.maps)


def test_temperature_sharpens_softmax_weights():
    clip = tiny_clip("resnet")
    imgs = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    own = as_scorer(clip).encode_images(imgs)      # each image's own embedding as its query: masked copies beat the baseline
    w1 = score_cam(clip, imgs, own, layer="visual.layer3", temperature=1.0).meta["weights"]
    w01 = score_cam(clip, imgs, own, layer="visual.layer3", temperature=1e-5).meta["weights"]
    kept = w1 > 0
    assert kept.any()
    # temperature 1 with cosines in [-1, 1]: nearly uniform over the kept channels; 1e-5 (this random model's scores differ
    # by about 1e-4, its embeddings all being alike): several times more concentrated
    assert float(w1.max(1).values.max()) < 2.5 / float(kept.sum(1).min())
    assert (w01.max(1).values > 3 * w1.max(1).values).all()
