"""Loaders and manifests of workbench.data.datasets on tiny fixture trees in each real format."""
import hashlib
import json
import logging
import pickle
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from workbench.core import InputError
from workbench.data.datasets import (CIFAR10, CUB200, DAVIS2017, LOADERS, SPair71k, CocoDetection, DatasetError,
                                     Flowers102, ImageNetLoc, SaliencyPairs, SamplePair, TinyImageNet, VOCDetection,
                                     collate_samples, dataset_status, file_digest, get_manifest, list_datasets,
                                     load_array_pickle, load_manifests, manifests_dir, open_dataset,
                                     save_indexed_png, verify_dataset, voc_palette, write_example)
from workbench.data.samples import Sample, masks_to_boxes

ALL = ["cifar10", "coco2017", "cub200", "davis2017", "dut_omron", "duts_te", "ecssd", "flowers102", "imagenet50",
       "imagenet_val", "partimagenet", "rareplanes", "spair71k", "tiny_imagenet", "voc2007", "voc2012"]


def img(path, h, w, value=None, fmt=None, seed=0):
    "Write a small RGB image (random, or one colour) and return its pixels."
    a = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt, **({"quality": 95} if str(path).lower().endswith((".jpg", ".jpeg")) else {}))
    return a


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def samples(ds):
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------- manifests

def test_every_manifest_loads_and_names_a_real_loader():
    ms = load_manifests()
    assert sorted(ms) == ALL
    for m in ms.values():
        assert m.loader in LOADERS
        assert m.homepage.startswith("http") and m.license and m.citation and m.layout
        assert all(e.kind in ("file", "dir") for e in m.layout)
        assert all(len(c.digest) == 32 and c.source for c in m.checksums + m.archives)
        assert m.registration_required == (m.name in ("imagenet_val", "imagenet50"))
    assert manifests_dir() == Path(__file__).resolve().parent.parent / "data_manifests"


def test_manifest_counts_that_are_known():
    ms = load_manifests()
    counts = {(m.name, e.path): e.count or e.lines for m in ms.values() for e in m.layout}
    assert counts[("voc2007", "JPEGImages")] == 9963
    assert counts[("voc2012", "JPEGImages")] == 17125
    assert counts[("coco2017", "val2017")] == 5000
    assert counts[("cub200", "images.txt")] == 11788
    assert counts[("imagenet_val", "ILSVRC/Data/CLS-LOC/val")] == 50000
    assert counts[("spair71k", "PairAnnotation/test")] == 12234
    assert counts[("rareplanes", "real/test/PS-RGB_tiled")] is None  # unknown, so not checked
    assert {c.path: c.digest for c in ms["cifar10"].archives} == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}


GOOD = """\
name: mini
title: Mini
description: a tiny saliency set
homepage: https://example.org/mini
license: none
citation: nobody, 2024
root: mini
layout:
  - {path: images, kind: dir, glob: "*.jpg", count: 3}
loader:
  class: SaliencyPairs
  kwargs: {images_dir: images, masks_dir: masks}
notebooks: []
"""


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "  - [unclosed\n", "not valid YAML"),
    (lambda t: t.replace("title: Mini\n", ""), "missing field(s) title"),
    (lambda t: t + "colour: red\n", "unknown field(s) colour"),
    (lambda t: t.replace("name: mini", "name: other"), "must match the file name"),
    (lambda t: t.replace("SaliencyPairs", "NoSuchLoader"), "unknown loader class 'NoSuchLoader'"),
    (lambda t: t.replace("masks_dir: masks", "mask_folder: masks"), "loader kwargs do not fit SaliencyPairs"),
    (lambda t: t.replace("kind: dir", "kind: folder"), "kind must be file or dir"),
    (lambda t: t.replace("count: 3", "count: -3"), "count must be a non-negative integer"),
    (lambda t: t.replace("path: images", "path: ../images"), "must be a relative path"),
    (lambda t: t + "checksums:\n  - {path: x, md5: abc}\n", "md5 must be 32 hex digits"),
    (lambda t: t + "checksums:\n  - {path: x, md5: 12345678901234567890123456789012}\n", "as a quoted string"),
    (lambda t: t.replace("notebooks: []", "notebooks: [gan]"), "notebooks must be a list"),
])
def test_malformed_manifest_names_the_file(tmp_path, edit, message):
    p = tmp_path / "mini.yaml"
    p.write_text(edit(GOOD))
    with pytest.raises(InputError) as e:
        load_manifests(tmp_path)
    assert f"manifest {p}" in str(e.value) and message in str(e.value)


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(InputError, match="unknown dataset 'imagenet'; valid: cifar10, coco2017, cub200"):
        verify_dataset("imagenet", root=tmp_path)


def test_manifests_env_override(tmp_path, monkeypatch):
    (tmp_path / "mini.yaml").write_text(GOOD)
    monkeypatch.setenv("WORKBENCH_MANIFESTS", str(tmp_path))
    assert list(load_manifests()) == ["mini"]


# ---------------------------------------------------------------- verify

def mini_manifest(tmp_path, data_root):
    "A manifest that fits the example saliency tree exactly, checksums included."
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "mini.yaml").write_text(GOOD.replace("count: 3}", "count: 3}\n  - {path: masks, kind: dir, glob: \"*.png\", count: 3}"))
    d = write_example("mini", data_root, manifests=mdir)
    md5 = file_digest(d / "masks/sun_0001.png")
    text = (mdir / "mini.yaml").read_text() + f"checksums:\n  - {{path: masks/sun_0001.png, md5: {md5}, source: test}}\n"
    (mdir / "mini.yaml").write_text(text + "archives:\n  - {file: mini.zip, md5: '" + "0" * 32 + "', source: test}\n")
    return mdir, d


def test_verify_complete_tree_is_found(tmp_path):
    mdir, d = mini_manifest(tmp_path, tmp_path / "data")
    rep = verify_dataset("mini", root=tmp_path / "data", manifests=mdir)
    assert rep.ok and rep.status == "found" and rep.problems == []
    assert rep.checksums_ok == ["masks/sun_0001.png"] and rep.archives_absent == ["mini.zip"]
    assert rep.lines()[0] == f"mini: found ({d})"
    assert [r["status"] for r in list_datasets(tmp_path / "data", mdir)] == ["found"]


def test_verify_reports_exactly_what_is_missing_or_wrong(tmp_path):
    mdir, d = mini_manifest(tmp_path, tmp_path / "data")
    (d / "images/sun_0002.jpg").unlink()
    rep = verify_dataset("mini", root=tmp_path / "data", manifests=mdir)
    assert rep.status == "incomplete" and not rep.ok
    assert rep.wrong_counts == [("images", (3, "*.jpg"), 2)] and rep.missing == []
    shutil.rmtree(d / "masks")
    rep = verify_dataset("mini", root=tmp_path / "data", manifests=mdir)
    assert rep.missing == ["masks", "masks/sun_0001.png"]
    assert "  missing: masks" in rep.lines()


def test_verify_checksums_and_archives(tmp_path):
    mdir, d = mini_manifest(tmp_path, tmp_path / "data")
    (d / "masks/sun_0001.png").write_bytes((d / "masks/sun_0000.png").read_bytes())
    (tmp_path / "data/mini.zip").write_bytes(b"not the archive")
    rep = verify_dataset("mini", root=tmp_path / "data", manifests=mdir)
    assert rep.status == "incomplete"
    got = {p: (exp, found) for p, exp, found in rep.checksum_mismatches}
    assert got["masks/sun_0001.png"][1] == hashlib.md5((d / "masks/sun_0000.png").read_bytes()).hexdigest()
    assert got[str(tmp_path / "data/mini.zip")] == ("0" * 32, hashlib.md5(b"not the archive").hexdigest())
    assert verify_dataset("mini", root=tmp_path / "data", manifests=mdir, checksums=False).ok


def test_status_missing_and_real_manifests_on_example_trees(tmp_path):
    m = get_manifest("coco2017")
    assert dataset_status(m, tmp_path) == "missing"
    assert verify_dataset("coco2017", root=tmp_path).lines()[1].startswith("  the folder does not exist; get the dataset from https://cocodataset.org")
    write_example("coco2017", tmp_path)
    rep = verify_dataset("coco2017", root=tmp_path)
    assert rep.status == "incomplete"
    assert ("val2017", (5000, "*.jpg"), 0) in rep.wrong_counts  # the example writes .png files
    assert rep.missing == ["train2017", "annotations/instances_train2017.json"]
    write_example("cifar10", tmp_path)
    assert len(verify_dataset("cifar10", root=tmp_path).checksum_mismatches) == 7
    write_example("voc2007", tmp_path)
    (tmp_path / "VOCtest_06-Nov-2007.tar").write_bytes(b"x")  # downloaded into the data root, beside VOCdevkit/
    rep = verify_dataset("voc2007", root=tmp_path)
    assert [p for p, _, _ in rep.checksum_mismatches] == [str(tmp_path / "VOCtest_06-Nov-2007.tar")]
    assert rep.archives_absent == ["VOCtrainval_06-Nov-2007.tar"]


def test_open_dataset_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset davis2017: .*DAVIS: dataset folder not found"):
        open_dataset("davis2017", root=tmp_path)


def test_dry_run_stands_in_a_missing_dataset_with_its_example_tree(tmp_path, monkeypatch):
    "Only in a dry run does a missing dataset open, from its format's example tree in the run folder; the real root is untouched."
    monkeypatch.setenv("WORKBENCH_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("WORKBENCH_DRY_RUN", "1")
    ds = open_dataset("imagenet_val", root=tmp_path / "data")
    assert len(ds) > 0 and ds.name == "imagenet_val" and ds[0].image.ndim == 3
    assert (tmp_path / "run" / "dry_run_data").is_dir() and not (tmp_path / "data").exists()
    monkeypatch.setenv("WORKBENCH_DRY_RUN", "0")
    with pytest.raises(DatasetError, match="dataset folder not found"): open_dataset("imagenet_val", root=tmp_path / "data")


# ---------------------------------------------------------------- every format through its manifest

@pytest.mark.parametrize("name", ALL)
def test_example_tree_opens_with_valid_deterministic_samples(tmp_path, name):
    write_example(name, tmp_path / "a")
    write_example(name, tmp_path / "b")
    a, b = open_dataset(name, root=tmp_path / "a"), open_dataset(name, root=tmp_path / "b")
    assert len(a) == len(b) > 0 and a.name == name
    for sa, sb in zip(samples(a), samples(b)):
        pairs = [(sa.src, sb.src), (sa.trg, sb.trg)] if isinstance(sa, SamplePair) else [(sa, sb)]
        for x, y in pairs:
            assert isinstance(x, Sample) and x.validate() is x
            assert x.meta["dataset"] == name and x.meta["class_names"] == a.class_names
            assert torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes) and x.meta["id"] == y.meta["id"]
            assert (x.labels < len(a.class_names)).all()


# ---------------------------------------------------------------- COCO

def coco_tree(root, anns=None, images=None):
    img(root / "imgs/a.jpg", 20, 30)
    img(root / "imgs/b.jpg", 10, 12, seed=1)
    data = dict(
        images=images or [dict(id=7, file_name="a.jpg", width=30, height=20), dict(id=3, file_name="b.jpg", width=12, height=10)],
        categories=[dict(id=5, name="plane"), dict(id=2, name="car")],
        annotations=anns if anns is not None else [
            dict(id=1, image_id=7, category_id=5, bbox=[2.5, 3, 10, 4], iscrowd=0, segmentation=[[2, 3, 12, 3, 12, 7, 2, 7]]),
            dict(id=2, image_id=7, category_id=2, bbox=[20, 0, 5, 5], iscrowd=1,
                 segmentation=dict(size=[20, 30], counts=[0, 5, 15, 5, 15, 5, 15, 5, 15, 5, 515])),
        ])
    (root / "ann.json").write_text(json.dumps(data))
    return root


def test_coco_boxes_labels_masks(tmp_path):
    ds = CocoDetection(coco_tree(tmp_path), "ann.json", "imgs", masks=True, name="toy")
    assert ds.class_names == ["car", "plane"] and ds.category_ids == [2, 5]
    assert [s.meta["image_id"] for s in samples(ds)] == [3, 7]  # sorted by id
    s = ds[1]
    assert s.boxes.tolist() == [[2.5, 3, 12.5, 7]] and s.labels.tolist() == [1]
    expect = np.zeros((20, 30), bool)
    expect[3:7, 2:12] = True
    assert (s.masks[0].numpy() ^ expect).sum() <= 2 * (4 + 10)  # polygon rasterisation may differ on the edge
    crowd = CocoDetection(tmp_path, "ann.json", "imgs", masks=True, crowd=True)[1]
    assert crowd.meta["iscrowd"] == [False, True] and crowd.boxes.tolist()[1] == [20, 0, 25, 5]
    rle = np.zeros((20, 30), bool)
    rle[0:5, 0:5] = True  # column-major RLE: 5 columns of 5 set pixels
    assert torch.equal(crowd.masks[1], torch.from_numpy(rle))
    assert ds[0].boxes.shape == (0, 4) and ds[0].masks.shape == (0, 10, 12)


@pytest.mark.parametrize("anns, message", [
    ([dict(id=9, image_id=7, category_id=4, bbox=[0, 0, 1, 1])], "annotation 9: unknown category_id 4"),
    ([dict(id=9, image_id=1, category_id=5, bbox=[0, 0, 1, 1])], "annotation 9: unknown image_id 1"),
    ([dict(id=9, image_id=7, category_id=5, bbox=[0, 0, 1])], "annotation 9: bbox must be 4 numbers"),
])
def test_coco_bad_annotations(tmp_path, anns, message):
    coco_tree(tmp_path, anns)
    with pytest.raises(DatasetError) as e:
        CocoDetection(tmp_path, "ann.json", "imgs", name="toy")
    assert str(e.value).startswith(f"dataset toy: {tmp_path / 'ann.json'}: ") and message in str(e.value)


def test_coco_truncated_json_and_image(tmp_path, caplog):
    coco_tree(tmp_path)
    good = (tmp_path / "ann.json").read_text()
    (tmp_path / "ann.json").write_text(good[:40])
    with pytest.raises(DatasetError, match=r"dataset toy: .*ann.json: malformed JSON at line 1 column"):
        CocoDetection(tmp_path, "ann.json", "imgs", name="toy")
    (tmp_path / "ann.json").write_text(good)
    truncate(tmp_path / "imgs/a.jpg")
    ds = CocoDetection(tmp_path, "ann.json", "imgs", name="toy")
    with pytest.raises(DatasetError, match=r"dataset toy: .*imgs/a.jpg: cannot decode image"):
        ds[1]
    skipping = CocoDetection(tmp_path, "ann.json", "imgs", name="toy", skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="workbench"):
        got = list(skipping)
    assert [s.meta["image_id"] for s in got] == [3]
    assert [(k.index, Path(k.file).name) for k in skipping.skipped] == [(1, "a.jpg")]
    assert "skipped 1 of 2 samples" in caplog.text
    loader = torch.utils.data.DataLoader(skipping, batch_size=2, collate_fn=collate_samples)
    assert [len(b) for b in loader] == [1]


def test_coco_size_mismatch_and_bad_polygon(tmp_path):
    coco_tree(tmp_path, images=[dict(id=7, file_name="a.jpg", width=31, height=20)], anns=[])
    with pytest.raises(DatasetError, match="image is 30x20 but ann.json says 31x20"):
        CocoDetection(tmp_path, "ann.json", "imgs")[0]
    coco_tree(tmp_path, anns=[dict(id=4, image_id=7, category_id=5, bbox=[0, 0, 2, 2], segmentation=[[0, 0, 2]])])
    with pytest.raises(DatasetError, match=r"ann.json \(annotation 4\): bad segmentation"):
        CocoDetection(tmp_path, "ann.json", "imgs", masks=True)[1]


# ---------------------------------------------------------------- VOC

VOC_XML = """<annotation><filename>{id}.jpg</filename><size><width>30</width><height>20</height><depth>3</depth></size>
<object><name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
  <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
<object><name>person</name><truncated>0</truncated><difficult>1</difficult>
  <bndbox><xmin>15</xmin><ymin>5</ymin><xmax>30</xmax><ymax>12</ymax></bndbox>
  <part><name>head</name><bndbox><xmin>16</xmin><ymin>5</ymin><xmax>18</xmax><ymax>7</ymax></bndbox></part></object>
</annotation>"""


def voc_tree(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "SegmentationObject").mkdir()
    for sub in ("Main", "Segmentation"):
        (root / "ImageSets" / sub).mkdir(parents=True)
        (root / "ImageSets" / sub / "val.txt").write_text("2008_000002\n2008_000001\n")
    for i in ("2008_000001", "2008_000002"):
        img(root / "JPEGImages" / f"{i}.jpg", 20, 30)
        (root / "Annotations" / f"{i}.xml").write_text(VOC_XML.format(id=i))
        seg = np.zeros((20, 30), np.uint8)
        seg[1:20, 0:10] = 1
        seg[4:12, 14:30] = 2
        seg[0, :] = 255
        save_indexed_png(seg, root / "SegmentationObject" / f"{i}.png")
    return root


def test_voc_one_based_boxes_difficult_and_instance_masks(tmp_path):
    voc_tree(tmp_path)
    ds = VOCDetection(tmp_path, "val", name="voc2012")
    assert ds.items == ["2008_000001", "2008_000002"]
    s = ds[0]
    assert s.boxes.tolist() == [[0, 1, 10, 20], [14, 4, 30, 12]]
    assert [s.class_names[l] for l in s.labels] == ["dog", "person"]
    assert s.meta["difficult"] == [False, True] and s.meta["truncated"] == [True, False] and s.masks is None
    assert VOCDetection(tmp_path, "val", difficult=False)[0].labels.tolist() == [11]
    seg = VOCDetection(tmp_path, "val", task="segmentation")[0]
    assert masks_to_boxes(seg.masks).tolist() == [[0, 1, 10, 20], [14, 4, 30, 12]]
    assert seg.meta["void"][0].all() and not seg.meta["void"][1:].any()


def test_voc_errors(tmp_path):
    voc_tree(tmp_path)
    (tmp_path / "Annotations/2008_000002.xml").write_text(VOC_XML.format(id="x").replace("dog", "dragon"))
    with pytest.raises(DatasetError, match="2008_000002.xml: unknown class 'dragon'"):
        VOCDetection(tmp_path, "val")[1]
    (tmp_path / "Annotations/2008_000002.xml").write_text(VOC_XML.format(id="x").replace("<xmax>10</xmax>", ""))
    with pytest.raises(DatasetError, match=r"2008_000002.xml \(object 0\): missing <xmax>"):
        VOCDetection(tmp_path, "val")[1]
    seg = np.zeros((20, 30), np.uint8)
    seg[3, 3] = 7
    save_indexed_png(seg, tmp_path / "SegmentationObject/2008_000001.png")
    with pytest.raises(DatasetError, match=r"instance indices \[7\] but 2008_000001.xml lists 2 objects"):
        VOCDetection(tmp_path, "val", task="segmentation")[0]
    with pytest.raises(DatasetError, match=r"dataset voc: .*ImageSets/Main/test.txt: image set not found"):
        VOCDetection(tmp_path, "test")


# ---------------------------------------------------------------- ImageNet LOC

def imagenet_tree(root):
    (root / "LOC_synset_mapping.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
                                                  "n01484850 great white shark, white shark\n")
    xml = "<annotation><size><width>30</width><height>20</height></size>{}</annotation>"
    obj = "<object><name>{}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"
    val = root / "ILSVRC/Annotations/CLS-LOC/val"
    val.mkdir(parents=True)
    for k, (wnid, box) in enumerate([("n01443537", (0, 0, 29, 19)), ("n01484850", (3, 4, 10, 12))], 1):
        img(root / f"ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_{k:08d}.JPEG", 20, 30, fmt="JPEG")
        (val / f"ILSVRC2012_val_{k:08d}.xml").write_text(xml.format(obj.format(wnid, *box) * 2))
    for wnid in ("n01440764", "n01443537", "n01484850"):
        for k in range(2):
            img(root / f"ILSVRC/Data/CLS-LOC/train/{wnid}/{wnid}_{k}.JPEG", 20, 30, fmt="JPEG")
        (root / f"ILSVRC/Annotations/CLS-LOC/train/{wnid}").mkdir(parents=True)
        (root / f"ILSVRC/Annotations/CLS-LOC/train/{wnid}/{wnid}_1.xml").write_text(xml.format(obj.format(wnid, 1, 1, 5, 5)))
    return root


def test_imagenet_val_boxes_labels_and_subsets(tmp_path):
    imagenet_tree(tmp_path)
    ds = ImageNetLoc(tmp_path, "val")
    assert ds.class_names == ["tench", "goldfish", "great white shark"] and len(ds) == 2
    s = ds[0]
    assert s.boxes.tolist() == [[0, 0, 30, 20]] * 2 and s.labels.tolist() == [1, 1] and s.meta["image_label"] == 1
    assert ImageNetLoc(tmp_path, "val", box_convention="voc")[1].boxes.tolist()[0] == [2, 3, 10, 12]
    (tmp_path / "subset.txt").write_text("n01484850 Great White Shark\nn01443537 Goldfish\n")
    sub = ImageNetLoc(tmp_path, "val", synsets="subset.txt")
    assert sub.class_names == ["great white shark", "goldfish"]
    assert [(x.meta["id"], x.meta["image_label"]) for x in samples(sub)] == [("ILSVRC2012_val_00000001", 1), ("ILSVRC2012_val_00000002", 0)]
    one = ImageNetLoc(tmp_path, "val", synsets=["n01484850"])
    assert [x.meta["wnid"] for x in samples(one)] == ["n01484850"]
    with pytest.raises(DatasetError, match=r"synsets argument: unknown wnid\(s\) n09999999"):
        ImageNetLoc(tmp_path, "val", synsets=["n09999999"])


def test_imagenet_train_has_boxes_where_an_xml_exists(tmp_path):
    imagenet_tree(tmp_path)
    ds = ImageNetLoc(tmp_path, "train", synsets=["n01440764"])
    got = [(s.meta["id"], s.meta["has_boxes"], s.boxes.tolist()) for s in samples(ds)]
    assert got == [("n01440764_0", False, []), ("n01440764_1", True, [[1, 1, 6, 6]])]
    (tmp_path / "LOC_synset_mapping.txt").write_text("tench, Tinca tinca\n")
    with pytest.raises(DatasetError, match=r"LOC_synset_mapping.txt:1: not a wnid: 'tench,'"):
        ImageNetLoc(tmp_path, "val")


# ---------------------------------------------------------------- Tiny ImageNet

def test_tiny_imagenet_inclusive_boxes_and_bad_lines(tmp_path):
    (tmp_path / "val/images").mkdir(parents=True)
    (tmp_path / "wnids.txt").write_text("n01443537\nn01440764\n")
    (tmp_path / "words.txt").write_text("n01440764\ttench, Tinca tinca\nn01443537\tgoldfish, Carassius auratus\n")
    img(tmp_path / "val/images/val_0.JPEG", 64, 64, fmt="JPEG")
    (tmp_path / "val/val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\t32\t44\t62\n")
    for w in ("n01440764", "n01443537"):
        img(tmp_path / f"train/{w}/images/{w}_0.JPEG", 64, 64, fmt="JPEG")
        (tmp_path / f"train/{w}/{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
    s = TinyImageNet(tmp_path, "val")[0]
    assert s.class_names == ["tench", "goldfish"]  # sorted wnids
    assert s.boxes.tolist() == [[0, 32, 45, 63]] and s.labels.tolist() == [1]
    train = TinyImageNet(tmp_path, "train")
    assert [x.meta["wnid"] for x in samples(train)] == ["n01440764", "n01443537"] and train[0].boxes.tolist() == [[0, 0, 64, 64]]
    (tmp_path / "val/val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\t32\t44\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt:1: expected 6 fields, got 5"):
        TinyImageNet(tmp_path, "val")
    (tmp_path / "val/val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\tx\t44\t62\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt:1: expected a number, got 'x'"):
        TinyImageNet(tmp_path, "val")


# ---------------------------------------------------------------- CUB

def cub_tree(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    (root / "images.txt").write_text("1 001.Black_footed_Albatross/a.jpg\n2 002.Laysan_Albatross/b.jpg\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n")
    (root / "bounding_boxes.txt").write_text("1 2.0 3.0 10.0 5.0\n2 0.0 0.0 12.0 20.0\n")
    for rel in ("001.Black_footed_Albatross/a", "002.Laysan_Albatross/b"):
        img(root / "images" / f"{rel}.jpg", 20, 30)
        soft = np.zeros((20, 30), np.uint8)
        soft[3:8, 2:12] = 153
        soft[10, 10] = 102
        (root / "segmentations" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft).save(root / "segmentations" / f"{rel}.png")
    return root


def test_cub_boxes_splits_masks(tmp_path):
    cub_tree(tmp_path)
    test = CUB200(tmp_path, "test")
    assert test.class_names == ["Black footed Albatross", "Laysan Albatross"]
    assert [(s.meta["id"], s.labels.tolist(), s.boxes.tolist()) for s in samples(test)] == [(2, [1], [[0, 0, 12, 20]])]
    train = CUB200(tmp_path, "train")[0]
    assert train.boxes.tolist() == [[2, 3, 12, 8]] and train.meta["image_label"] == 0
    assert masks_to_boxes(train.masks).tolist() == [[2, 3, 12, 8]]  # 153/255 >= 0.5; 102/255 is not
    assert len(CUB200(tmp_path, "all")) == 2 and CUB200(tmp_path, "all", segmentations=False)[0].masks is None
    (tmp_path / "bounding_boxes.txt").write_text("1 2.0 3.0 10.0 5.0\n")
    with pytest.raises(DatasetError, match=r"dataset cub200: .*bounding_boxes.txt: no line for image id\(s\) \[2\]"):
        CUB200(tmp_path)


# ---------------------------------------------------------------- Flowers

def test_flowers_blue_background_masks(tmp_path):
    savemat(tmp_path / "imagelabels.mat", dict(labels=np.array([[2, 1]], np.uint8)))
    savemat(tmp_path / "setid.mat", dict(trnid=np.array([[1]]), valid=np.array([[2]]), tstid=np.array([[1, 2]])))
    img(tmp_path / "jpg/image_00001.jpg", 24, 32)
    img(tmp_path / "jpg/image_00002.jpg", 24, 32)
    seg = np.zeros((24, 32, 3), np.uint8)
    seg[..., 2] = 254
    (tmp_path / "segmim").mkdir()
    Image.fromarray(seg).save(tmp_path / "segmim/segmim_00002.jpg", quality=90)
    seg[5:15, 8:20] = (200, 180, 40)
    Image.fromarray(seg).save(tmp_path / "segmim/segmim_00001.jpg", quality=90)
    ds = Flowers102(tmp_path, "test")
    a, b = samples(ds)
    # painted region [8, 5, 20, 15]; JPEG chroma subsampling may blur the edge by a pixel
    assert np.abs(a.boxes.numpy() - [[8, 5, 20, 15]]).max() <= 1 and a.labels.tolist() == [1] and a.meta["image_label"] == 1
    assert a.masks[0, 6:14, 9:19].all() and a.masks[0].sum() <= 14 * 12
    assert b.boxes.shape == (0, 4) and b.masks.shape == (0, 24, 32) and not b.semantic().any()
    assert ds.class_names == ["flower_001", "flower_002"] and len(Flowers102(tmp_path, "train")) == 1
    (tmp_path / "setid.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    with pytest.raises(DatasetError, match=r"dataset flowers102: .*setid.mat: cannot read MATLAB file"):
        Flowers102(tmp_path)


# ---------------------------------------------------------------- saliency

def test_saliency_pairs_threshold_and_unmatched(tmp_path, caplog):
    for k in range(3):
        img(tmp_path / f"im/x{k}.jpg", 10, 12)
        m = np.zeros((10, 12), np.uint8)
        m[2:5, 3:9] = 200 if k else 100
        (tmp_path / "gt").mkdir(exist_ok=True)
        Image.fromarray(m).save(tmp_path / f"gt/x{k}.png")
    ds = SaliencyPairs(tmp_path, "im", "gt", name="ecssd")
    s0, s1, _ = samples(ds)
    assert s0.boxes.shape == (0, 4) and s1.boxes.tolist() == [[3, 2, 9, 5]] and s1.class_names == ["salient object"]
    assert s1.meta["mask_file"] == "gt/x1.png"
    (tmp_path / "gt/x1.png").unlink()
    with pytest.raises(DatasetError, match=r"dataset ecssd: .*im/x1.jpg: no mask x1.png in"):
        SaliencyPairs(tmp_path, "im", "gt", name="ecssd")
    with caplog.at_level(logging.WARNING, logger="workbench"):
        skip = SaliencyPairs(tmp_path, "im", "gt", name="ecssd", skip_bad=True)
    assert len(skip) == 2 and [(k.index, Path(k.file).name) for k in skip.skipped] == [(-1, "x1.jpg")]
    assert "x1.jpg" in caplog.text
    Image.fromarray(np.zeros((9, 12), np.uint8)).save(tmp_path / "gt/x2.png")
    assert skip[1] is None and skip.skipped[-1].index == 1 and "gt/x2.png: mask is (12, 9) but the image is (12, 10)" in skip.skipped[-1].reason
    (tmp_path / "im/x1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"gt/x2.png: mask is \(12, 9\) but the image is \(12, 10\)"):
        SaliencyPairs(tmp_path, "im", "gt")[1]


# ---------------------------------------------------------------- CIFAR-10

class Boom:
    def __reduce__(self):
        return (print, ("executed",))


def cifar_tree(root, protocol=2, keys=str):
    root.mkdir(parents=True, exist_ok=True)
    k = (lambda s: s.encode()) if keys is bytes else (lambda s: s)
    names = [n.encode() if keys is bytes else n for n in ["airplane", "automobile", "bird"]]
    (root / "batches.meta").write_bytes(pickle.dumps({k("label_names"): names}, protocol=protocol))
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for f in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (root / f).write_bytes(pickle.dumps({k("data"): data, k("labels"): [2, 0], k("filenames"): [b"a.png", b"b.png"]}, protocol=protocol))
    return data


@pytest.mark.parametrize("protocol, keys", [(2, str), (4, bytes)])
def test_cifar_batches(tmp_path, protocol, keys):
    data = cifar_tree(tmp_path, protocol, keys)
    ds = CIFAR10(tmp_path, train=False)
    assert ds.class_names == ["airplane", "automobile", "bird"] and len(ds) == 2
    s = ds[0]
    assert torch.equal(s.image, torch.from_numpy(data[0].reshape(3, 32, 32))) and s.image[0, 0, 1] == 1
    assert s.meta["image_label"] == 2 and s.meta["filename"] == "a.png" and s.boxes.shape == (0, 4)
    assert len(CIFAR10(tmp_path, train=True)) == 10


def test_cifar_refuses_code_and_truncation(tmp_path, capsys):
    cifar_tree(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Boom(), "labels": []}))
    with pytest.raises(DatasetError, match=r"dataset cifar10: .*test_batch: cannot unpickle .*builtins.print is not allowed"):
        CIFAR10(tmp_path)
    assert "executed" not in capsys.readouterr().out
    cifar_tree(tmp_path)
    truncate(tmp_path / "test_batch", 0.3)
    with pytest.raises(DatasetError, match=r"test_batch: cannot unpickle"):
        CIFAR10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"test_batch: 'data' must be a uint8 array of shape \(N, 3072\)"):
        CIFAR10(tmp_path)
    assert load_array_pickle(tmp_path / "batches.meta", "x")["label_names"][0] == "airplane"


# ---------------------------------------------------------------- SPair-71k

def test_spair_pairs_keypoints_and_errors(tmp_path):
    (tmp_path / "Layout/large").mkdir(parents=True)
    (tmp_path / "PairAnnotation/test").mkdir(parents=True)
    img(tmp_path / "JPEGImages/cat/2009_000010.jpg", 20, 30)
    img(tmp_path / "JPEGImages/cat/2010_000211.jpg", 24, 28, seed=2)
    line = "000017-2009_000010-2010_000211:cat"
    (tmp_path / "Layout/large/test.txt").write_text(line + "\n")
    ann = dict(category="cat", src_bndbox=[1, 2, 20, 18], trg_bndbox=[0, 0, 27, 23], src_kps=[[3, 4], [10, 11]],
               trg_kps=[[5, 6], [12, 20]], kps_ids=["1", "4"], viewpoint_variation=2, scale_variation=1, truncation=0, occlusion=1)
    (tmp_path / f"PairAnnotation/test/{line}.json").write_text(json.dumps(ann))
    p = SPair71k(tmp_path, "test")[0]
    assert isinstance(p, SamplePair) and p.meta["category"] == "cat" and p.meta["viewpoint_variation"] == 2
    assert p.src.meta["keypoints"].tolist() == [[3, 4], [10, 11]] and p.trg.meta["keypoints"].dtype == torch.float32
    assert p.src.boxes.tolist() == [[1, 2, 20, 18]] and p.trg.size == (24, 28) and p.src.class_names[p.src.labels[0]] == "cat"
    ann["trg_kps"] = [[5, 6]]
    (tmp_path / f"PairAnnotation/test/{line}.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match="2 source but 1 target keypoints"):
        SPair71k(tmp_path, "test")[0]
    (tmp_path / "Layout/large/test.txt").write_text("000017-2009_000010:cat\n")
    with pytest.raises(DatasetError, match=r"test.txt:1: expected 'index-source-target:category'"):
        SPair71k(tmp_path, "test")


# ---------------------------------------------------------------- DAVIS

def test_davis_palette_masks_per_object(tmp_path):
    (tmp_path / "ImageSets/2017").mkdir(parents=True)
    (tmp_path / "ImageSets/2017/val.txt").write_text("dog\n")
    (tmp_path / "Annotations/480p/dog").mkdir(parents=True)
    for f in range(2):
        img(tmp_path / f"JPEGImages/480p/dog/{f:05d}.jpg", 12, 16)
    a = np.zeros((12, 16), np.uint8)
    a[1:4, 2:6] = 1
    a[6:10, 8:15] = 3
    save_indexed_png(a, tmp_path / "Annotations/480p/dog/00000.png")
    with pytest.raises(DatasetError, match=r"00001.png: annotation|00001.png: image not found"):
        DAVIS2017(tmp_path, "val")[1]
    ds = DAVIS2017(tmp_path, "val", annotated_only=True)
    s = ds[0]
    assert len(ds) == 1 and s.meta["object_ids"] == [1, 3] and s.meta["sequence"] == "dog" and s.meta["frame"] == 0
    assert s.boxes.tolist() == [[2, 1, 6, 4], [8, 6, 15, 10]] and s.labels.tolist() == [0, 0]
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "Annotations/480p/dog/00000.png")
    with pytest.raises(DatasetError, match="expected an indexed"):
        ds[0]


# ---------------------------------------------------------------- errors travel to DataLoader workers

def test_voc_palette():
    p = voc_palette()
    assert len(p) == 768 and p[3:9] == [128, 0, 0, 0, 128, 0] and p[-3:] == [224, 224, 192]


def test_dataset_error_pickles_with_its_fields():
    e = pickle.loads(pickle.dumps(DatasetError("dataset x: f.jpg: broken", "x", "f.jpg")))
    assert (str(e), e.dataset, e.file) == ("dataset x: f.jpg: broken", "x", "f.jpg") and isinstance(e, InputError)
