"""Co-localization GANs: variants, checkpoints of spectral-norm discriminators, the CAM against the score, the training loop's determinism."""
from __future__ import annotations

import pytest
import torch

from workbench.core import InputError, torch_generator
from workbench.methods.colocalization import cam_stability_stop, discriminator_cam, generate, ms_ssim_diversity
from workbench.models.coloc import GAN_VARIANTS, CoLocDiscriminator, gan_variant
from workbench.models.registry import load_model, save_checkpoint
from workbench.train.coloc import train_coloc_gan


@pytest.mark.parametrize("name", list(GAN_VARIANTS))
def test_discriminator_checkpoint_round_trip_keeps_the_cam(tmp_path, name):
    v = gan_variant(name)
    _, D = v.build(32, width=4)
    with torch.no_grad():                                   # a few forwards in train mode move BN statistics and SN's u, v
        for _ in range(3): D.train()(torch.rand(4, 3, 32, 32) * 2 - 1)
    D.eval()
    path = save_checkpoint(D, tmp_path / "d.safetensors", "wb:coloc-discriminator", **v.discriminator_kwargs(32, 4))
    D2 = load_model(path, device="cpu").model
    assert isinstance(D2, CoLocDiscriminator) and (D2.norm, D2.spectral) == (v.norm, v.spectral)
    imgs = (torch.rand(3, 3, 32, 32, generator=torch_generator(0)) * 255).byte()
    a, b = discriminator_cam(D, imgs), discriminator_cam(D2, imgs)
    torch.testing.assert_close(a.maps, b.maps)
    # the CAM's mean plus the bias is the discriminator's score (GAP + linear)
    torch.testing.assert_close(a.maps.mean(dim=(1, 2)) + D.fc.bias.detach(), torch.tensor(a.meta["score"]), rtol=1e-4, atol=1e-5)


def test_training_is_deterministic_and_scores_along_the_way():
    imgs = (torch.rand(24, 3, 32, 32, generator=torch_generator(1)) * 255).byte()
    maps, steps = [], []
    def score(step, G, D):
        steps.append(step); maps.append(discriminator_cam(D, imgs[:6]))
    r1 = train_coloc_gan("SN-DCGAN", imgs, steps=6, width=4, batch_size=8, seed=3, eval_every=2, callback=score, show_progress=False)
    r2 = train_coloc_gan("SN-DCGAN", imgs, steps=6, width=4, batch_size=8, seed=3, show_progress=False)
    assert steps == [2, 4, 6]
    torch.testing.assert_close(generate(r1.model, 4, seed=0).float(), generate(r2.model, 4, seed=0).float(), atol=0, rtol=0)
    stop = cam_stability_stop(steps, maps)
    assert stop["step"] in (4, 6) and stop["stability"][0] is None
    assert 0 <= ms_ssim_diversity(generate(r1.model, 8), n_pairs=10) <= 1


def test_bad_inputs_name_what_is_valid():
    imgs = (torch.rand(4, 3, 32, 32) * 255).byte()
    with pytest.raises(InputError, match="valid: DCGAN, SN-DCGAN"):
        train_coloc_gan("LSGAN", imgs, 2)
    with pytest.raises(InputError, match="augment="):
        train_coloc_gan("DCGAN", imgs, 2, batch_size=2, augment="False")      # a string is not a boolean
    with pytest.raises(InputError, match="norm="):
        CoLocDiscriminator(32, norm="spectral")
    with pytest.raises(InputError, match="the network takes 32 x 32"):
        discriminator_cam(CoLocDiscriminator(32, width=4), (torch.rand(2, 3, 64, 64) * 255).byte())


def test_a_32px_set_is_the_64px_set_downsampled_with_its_boxes_halved():
    from workbench.methods.colocalization import coloc_set
    x64, b64 = coloc_set("mushroom", 0.5, 4, resolution=64, seed=3)
    x32, b32 = coloc_set("mushroom", 0.5, 4, resolution=32, seed=3)
    torch.testing.assert_close(x32.float(), torch.nn.functional.avg_pool2d(x64.float(), 2), atol=0.51, rtol=0)
    for a, b in zip(b64, b32): torch.testing.assert_close(a / 2, b)
    # distractors (other categories) are not targets: at diversity 0.5 some image has fewer targets than instances
    from workbench.data.worlds import ObjectWorld
    w = ObjectWorld(category="mushroom", size=64, seed=3, diversity=0.5)
    assert [len(b) for b in b64] == [sum(not f for f in w[i].meta["is_distractor"]) for i in range(4)]


def test_the_supervised_cam_classifier_learns_and_its_cam_follows_the_object():
    from workbench.methods.colocalization import classifier_cam
    from workbench.models.coloc import PreActResNet
    from workbench.train.coloc import train_cam_classifier
    g = torch_generator(0)
    imgs = torch.full((64, 3, 16, 16), 128, dtype=torch.uint8)
    labels = torch.arange(64) % 2
    pos = torch.randint(0, 10, (64, 2), generator=g)
    for i, (y, x) in enumerate(pos.tolist()):            # class 0: a dark square, class 1: a bright one, anywhere
        imgs[i, :, y:y + 6, x:x + 6] = 20 if labels[i] == 0 else 240
    torch.manual_seed(0)
    net = PreActResNet(2, depths=(1, 1), width=8)
    r = train_cam_classifier(net, imgs, labels, steps=80, batch_size=32, lr=0.05, augment=False, show_progress=False)
    with torch.no_grad(): acc = (net(imgs.float() / 127.5 - 1).argmax(1) == labels).float().mean().item()
    assert acc > 0.9 and r.history.final("loss") < r.history[0]["loss"]
    cam = classifier_cam(net, imgs, labels).upsampled((16, 16))
    inside = torch.stack([cam[i, y:y + 6, x:x + 6].mean() for i, (y, x) in enumerate(pos.tolist())])
    assert (inside > cam.mean(dim=(1, 2))).float().mean() > 0.8


def test_the_committed_sn_dcgan_checkpoints_carry_their_provenance():
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "checkpoints"
    ds = sorted(root.glob("coloc_sn_dcgan_*_d.safetensors"))
    assert ds, "no checkpoints/coloc_sn_dcgan_<category>_d.safetensors committed"
    assert sum(f.stat().st_size for f in root.glob("coloc_*.safetensors")) <= 6e6     # the issue: <= 6 MB together
    for d in ds:
        g = d.with_name(d.name.replace("_d.safetensors", "_g.safetensors"))
        assert g.is_file()
        for path, role in ((d, "discriminator"), (g, "generator")):
            p = json.loads(path.with_suffix(".json").read_text())["params"]
            assert p["variant"] == "SN-DCGAN" and p["role"] == role and p["category"] in d.name
            assert {"diversity", "resolution", "seed", "steps"} <= set(p)
        D = load_model(d, device="cpu").model
        G = load_model(g, device="cpu").model
        imgs = generate(G, 4, seed=0)
        assert imgs.shape[-1] == json.loads(d.with_suffix(".json").read_text())["params"]["resolution"]
        assert torch.isfinite(discriminator_cam(D, imgs).maps).all()
