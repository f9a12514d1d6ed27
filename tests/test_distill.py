"""Distillation: mask sets, the U-Net (weights only from the weights folder), training with best-validation weights,
box evaluation of mask components, and Table 1."""
import math

import numpy as np
import pytest
import torch

from workbench.data.samples import MaskSet, mask_objects, maskset_from_world
from workbench.methods.distill import (TABLE1_ANNOTATIONS, Table1Config, augment_batch, build_unet, dice_loss_on,
                                       evaluate_segmenter, find_encoder_weights, predict_masks, render_table1,
                                       run_table1, save_unet, table1, table1_row, train_segmenter)
from workbench.eval.boxes import evaluate_boxes
from workbench.viz.figures import plot_table1
from workbench.data.fixtures import toy_squares
from workbench.core import InputError
from workbench.models.registry import WeightsMissingError, load_model
from workbench.data.worlds import AerialWorld

SMALL = dict(decoder_channels=(32, 16, 16, 8, 8))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return toy_squares(64, size=32, seed=0), toy_squares(24, size=32, seed=1)


@pytest.fixture(scope="module")
def trained(toy):
    train, val = toy
    return train_segmenter(build_unet(**SMALL, seed=0), train, val, epochs=6, batch_size=16, seed=0, device="cpu")


def test_dice_loss_falls_and_squares_are_found(toy, trained):
    train, val = toy
    h = trained.history
    assert h[-1]["train_loss"] < 0.6 * h[0]["train_loss"], h
    test = toy_squares(32, size=32, seed=2)
    r = evaluate_segmenter(trained.model, test, min_area=4, device="cpu")
    assert r["f1"] >= 0.8, r
    assert r["pixel_iou"] >= 0.6, r


def test_best_validation_weights_are_returned(toy, trained):
    _, val = toy
    vals = [e["val_loss"] for e in trained.history]
    assert trained.best["epoch"] == 1 + int(np.argmin(vals))
    assert trained.best["val_loss"] == min(vals)
    assert math.isclose(dice_loss_on(trained.model, val, batch_size=7), trained.best["val_loss"], abs_tol=1e-5)
    assert not trained.model.training


def test_training_is_deterministic_for_a_seed(toy):
    train, val = toy
    runs = [train_segmenter(build_unet(**SMALL, seed=s), train, val, epochs=1, batch_size=16, seed=s, device="cpu")
            for s in (3, 3, 4)]
    a, b, c = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]


def test_augmentation_moves_masks_with_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    t = (x[:, :1] > 128).float()
    xa, ta = augment_batch(x, t, g)
    assert torch.equal((xa[:, :1] > 128).float(), ta)
    assert not torch.equal(xa, x)
    assert sorted(xa.flatten(1).sum(1).tolist()) == sorted(x.flatten(1).sum(1).tolist())


def test_evaluate_boxes_known_answers():
    gt = torch.zeros(2, 20, 20, dtype=torch.bool)
    gt[0, 2:8, 2:8] = True; gt[0, 12:18, 12:18] = True            # two airplanes in image 0
    gt[1, 10:12, 10:12] = True                                     # a small one (4 px) in image 1: still counts
    pred = torch.zeros_like(gt)
    pred[0, 2:8, 2:7] = True                                       # IoU 5/6 with the first: a match
    pred[0, 12:18, 12:14] = True                                   # IoU 1/3 with the second: fp and fn
    pred[0, 0, 19] = True                                          # a speck: dropped by min_area
    r = evaluate_boxes(pred, gt, min_area=3)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 2)
    assert r["precision"] == 0.5 and r["recall"] == 1 / 3
    assert math.isclose(r["f1"], 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert evaluate_boxes(pred, gt, min_area=1)["fp"] == 2
    assert evaluate_boxes(pred, gt, min_area=3, gt_min_area=5)["fn"] == 1
    assert evaluate_boxes(gt, gt, min_area=1)["f1"] == 1.0
    perfect = evaluate_boxes(gt, gt)                               # default min_area drops the 4-px prediction, not the 4-px truth
    assert (perfect["tp"], perfect["fn"]) == (2, 1)
    assert evaluate_boxes(gt[:, None].float(), gt, min_area=1)["tp"] == 3   # (N,1,H,W) float masks threshold at 0.5
    assert evaluate_boxes(torch.zeros_like(gt), gt)["recall"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_boxes(pred[:1], gt)


def test_join_groups_pieces_of_one_object():
    m = torch.zeros(16, 16, dtype=torch.bool)
    m[2:6, 2:6] = True; m[2:6, 8:12] = True                        # 2 px apart: one object with join=1
    m[12:15, 2:6] = True                                           # 6 px below: its own object
    assert len(mask_objects(m, join=0)) == 3
    objs = mask_objects(m, join=1)
    assert len(objs) == 2 and objs.sum() == m.sum()                # grouping never adds pixels
    pred = m.clone(); pred[2:6, 6:8] = True                        # the predicted airplane is whole
    assert evaluate_boxes(pred[None], m[None], join=1)["f1"] == 1.0
    assert evaluate_boxes(pred[None], m[None], join=0)["tp"] == 1


def test_maskset_from_world_is_the_union_of_airplane_masks():
    world = AerialWorld(size=64, seed=4)
    ms = maskset_from_world(world, 8, start=3)
    assert ms.images.dtype == torch.uint8 and ms.targets.dtype == torch.float32
    assert ms.ids == list(range(3, 11)) and ms.meta["class_name"] == "airplane"
    for k, i in enumerate(ms.ids):
        s = world[i]
        assert torch.equal(ms.images[k], s.image)
        planes = s.masks[s.labels == world.class_names.index("airplane")]
        expected = planes.any(0) if len(planes) else torch.zeros(64, 64, dtype=torch.bool)
        assert torch.equal(ms.masks[k], expected)
    cars = maskset_from_world(world, 8, class_name="car", start=3)
    assert not torch.equal(cars.targets, ms.targets)
    tr, va = ms.split(0.25, seed=0)
    assert len(va) == 2 and sorted(tr.ids + va.ids) == ms.ids
    assert ms.split(0.25, seed=0)[1].ids == va.ids


def test_maskset_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        MaskSet(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="N,1,H,W"):
        MaskSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 8, 8))


def test_pretrained_encoder_missing_gives_clear_error_and_unavailable_rows(isolated_settings, tmp_path, monkeypatch, toy):
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(WeightsMissingError) as e:
        build_unet(encoder_weights="imagenet")
    msg = str(e.value)
    assert str(tmp_path / "w" / "smp" / "resnet18-imagenet.pth") in msg and "never downloads" in msg
    train, val = toy
    rows = run_table1(Table1Config(inits=("pretrained",), epochs=1, batch_size=16, **SMALL), {"Oracle": train}, val)
    pre = [r for r in rows if r["init"] == "pretrained"]
    assert len(pre) == 1 and pre[0]["status"] == "unavailable" and pre[0]["f1"] is None
    assert "resnet18-imagenet.pth" in pre[0]["reason"]
    rnd = [r for r in rows if r["init"] == "random"]
    assert rnd[0]["status"] == "unavailable" and rnd[0]["reason"] == "not run"
    md = render_table1(rows)
    assert f"| unavailable: no ImageNet encoder weights at {tmp_path / 'w' / 'smp' / 'resnet18-imagenet.pth'} [1] |" in md, md
    assert "\n[1] ImageNet weights for the resnet18 U-Net encoder are missing" in md


def test_pretrained_encoder_loads_from_weights_folder(isolated_settings, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    tv = torchvision.models.resnet18()                             # random, with torchvision's key names and an fc head
    with torch.no_grad(): tv.bn1.running_mean.uniform_()
    (tmp_path / "w" / "smp").mkdir(parents=True)
    torch.save(tv.state_dict(), tmp_path / "w" / "smp" / "resnet18-imagenet.pth")
    net = build_unet(encoder_weights="imagenet", **SMALL)
    enc = net.encoder.state_dict()
    sd = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert set(enc) == set(sd) and all(torch.equal(enc[k], sd[k]) for k in sd)
    assert find_encoder_weights().name == "resnet18-imagenet.pth"
    from safetensors.torch import save_file                        # smp-hub's file: the encoder's tensors, as safetensors
    (tmp_path / "w" / "smp" / "resnet18-imagenet.pth").unlink()
    save_file(net.encoder.state_dict(), str(tmp_path / "w" / "smp" / "resnet18-imagenet.safetensors"))
    again = build_unet(encoder_weights="imagenet", seed=5, **SMALL)
    assert torch.equal(again.encoder.bn1.running_mean, tv.bn1.running_mean)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "w" / "smp" / "resnet18-imagenet.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_unet(encoder_weights="imagenet")


def test_table1_layout_and_render():
    rows = [table1_row("Oracle", "random", dict(f1=0.8, precision=0.9, recall=0.72)),
            table1_row("Neurons", "random", dict(f1=0.5, precision=0.6, recall=0.4286)),
            table1_row("Neurons", "pretrained", reason="weights missing")]
    t = table1(rows)
    assert [(r["annotation"], r["init"]) for r in t] == [(a, i) for a in ("Neurons", "Oracle") for i in ("random", "pretrained")]
    assert t[3]["status"] == "unavailable" and t[3]["reason"] == "not run"
    md = render_table1(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| annotation | random encoder") and "pretrained" in lines[0]
    assert lines[2] == "| Neurons | 50.0 (60.0 / 42.9) | unavailable: weights missing |"
    assert lines[3] == "| Oracle | 80.0 (90.0 / 72.0) | unavailable: not run |"
    assert TABLE1_ANNOTATIONS[-1] == "Oracle"
    import matplotlib.pyplot as plt
    fig = plot_table1(rows); assert len(fig.axes) == 1; plt.close(fig)
    with pytest.raises(ValueError, match="valid: random, pretrained"):
        table1_row("Oracle", "imagenet")


def test_trained_unet_round_trips_through_a_checkpoint(trained, tmp_path, toy):
    path = save_unet(trained.model, tmp_path / "unet.safetensors")
    lm = load_model(path, device="cpu")
    assert lm.arch == "wb:unet"
    _, val = toy
    assert torch.equal(predict_masks(lm.model, val.images), predict_masks(trained.model, val.images))


def test_cross_entropy_loss_with_step_decay_learns_and_decays(toy):
    "The paper's recipe (two-logit cross-entropy, lr x0.2 every k steps): the loss falls, the schedule steps, bad options are refused."
    train, val = toy
    r = train_segmenter(build_unet(**SMALL, seed=0), train, val, epochs=6, batch_size=16, seed=0, device="cpu",
                        loss="ce", schedule="step", step_every=16, step_gamma=0.5)
    h = r.history
    assert h[-1]["train_loss"] < 0.7 * h[0]["train_loss"], h
    test = toy_squares(32, size=32, seed=2)
    assert evaluate_segmenter(r.model, test, min_area=4, device="cpu")["pixel_iou"] >= 0.5
    with pytest.raises(InputError, match="loss"):
        train_segmenter(build_unet(**SMALL, seed=0), train, epochs=1, batch_size=16, loss="focal")
    with pytest.raises(InputError, match="step_every"):
        train_segmenter(build_unet(**SMALL, seed=0), train, epochs=1, batch_size=16, schedule="step", step_every=0)
