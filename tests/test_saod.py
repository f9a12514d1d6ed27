"SAOD splits (the invariants of every rule, determinism, files) and detection evaluation (COCO AP, proposal recall, mining quality)."
import contextlib
import io
import json
import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from workbench.core import InputError
from workbench.data.splits import (SPLIT4_VARIANTS, boxes_by_image, generate_splits, make_split, read_coco,
                                   split_stats, stats_table, write_split)
from workbench.eval.boxes import category_label_map, coco_ap, detections_to_coco, mining_quality, proposal_recall

P_RULES = ("split1", "split2", "split3", "split5")
PS = (0.1, 0.3, 0.5, 0.7, 1.0)


def synthetic_coco(n_images=50, n_cats=3, seed=0):
    "50 images of 0-8 random boxes in 3 categories (ids 1, 2, 3), some images empty, plus two crowd regions."
    rng = np.random.default_rng(seed)
    images = [dict(id=100 + i, file_name=f"{i:03d}.jpg", width=200, height=150) for i in range(n_images)]
    cats = [dict(id=c + 1, name=f"cat{c + 1}") for c in range(n_cats)]
    anns, next_id = [], 1
    for im in images:
        for _ in range(int(rng.integers(0, 9))):
            x, y = rng.uniform(0, 140, 2)
            w, h = rng.uniform(5, 60, 2)
            anns.append(dict(id=next_id, image_id=im["id"], category_id=int(rng.integers(1, n_cats + 1)),
                             bbox=[round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)],
                             area=float(w * h), iscrowd=0))
            next_id += 1
    for img in (images[0]["id"], images[1]["id"]):
        anns.append(dict(id=next_id, image_id=img, category_id=1, bbox=[0.0, 0.0, 80.0, 60.0], area=4800.0, iscrowd=1))
        next_id += 1
    return dict(info=dict(description="synthetic"), images=images, annotations=anns, categories=cats)


@pytest.fixture(scope="module")
def coco():
    return synthetic_coco()


def rhu(x):
    "Round half up, written independently of the module."
    return math.floor(x + 0.5 + 1e-9)


def instances(anns):
    return [a for a in anns if not a["iscrowd"]]


def per_image(anns):
    out = defaultdict(list)
    for a in instances(anns): out[a["image_id"]].append(a)
    return out


def all_splits(coco):
    for rule in P_RULES:
        for p in PS:
            yield make_split(coco, rule, p, seed=0)
    for v in SPLIT4_VARIANTS:
        yield make_split(coco, "split4", variant=v, seed=0)


# ---------------------------------------------------------------- splits: invariants of every rule

def test_dataset_is_interesting(coco):
    n = Counter(len(v) for v in per_image(coco["annotations"]).values())
    assert n[1] >= 2 and max(n) >= 6 and len(per_image(coco["annotations"])) < len(coco["images"])


def test_every_split_partitions_the_annotations(coco):
    orig = {a["id"] for a in coco["annotations"]}
    crowd = {a["id"] for a in coco["annotations"] if a["iscrowd"]}
    for s in all_splits(coco):
        kept, removed = {a["id"] for a in s.kept["annotations"]}, {a["id"] for a in s.removed}
        assert kept | removed == orig and not kept & removed, s.name
        assert crowd <= kept, s.name
        assert s.kept["images"] == coco["images"] and s.kept["categories"] == coco["categories"]
        assert s.kept["info"]["saod_split"]["rule"] == s.rule
        assert s.stats["n_removed"] == len(removed) and s.stats["n_kept"] == len(kept - crowd)
    assert "saod_split" not in coco["info"]


@pytest.mark.parametrize("p", PS)
def test_split1_removes_exact_count_per_category(coco, p):
    s = make_split(coco, "split1", p, seed=0)
    total = Counter(a["category_id"] for a in instances(coco["annotations"]))
    removed = Counter(a["category_id"] for a in s.removed)
    for c in total:
        assert removed[c] == rhu(p * total[c])
    rows = {r["id"]: r for r in s.stats["per_class"]}
    assert all(rows[c]["removed"] == rows[c]["target_removed"] == removed[c] for c in total)


def test_split1_can_empty_images_and_is_nested_in_p(coco):
    assert make_split(coco, "split1", 0.7, seed=0).stats["n_images_left_empty"] > 0
    assert make_split(coco, "split1", 1.0, seed=0).stats["n_images_left_empty"] == len(per_image(coco["annotations"]))
    sets = [{a["id"] for a in make_split(coco, "split1", p, seed=3).removed} for p in PS]
    assert all(a <= b for a, b in zip(sets, sets[1:]))


@pytest.mark.parametrize("p", PS)
def test_split2_removes_whole_categories_per_image(coco, p):
    s = make_split(coco, "split2", p, seed=0)
    gone = {a["id"] for a in s.removed}
    for img, anns in per_image(coco["annotations"]).items():
        by_cat = defaultdict(set)
        for a in anns: by_cat[a["category_id"]].add(a["id"] in gone)
        assert all(len(v) == 1 for v in by_cat.values()), f"image {img}: a category partly removed"
        n_removed_cats = sum(1 for v in by_cat.values() if True in v)
        assert n_removed_cats == rhu(p * len(by_cat))


@pytest.mark.parametrize("p", PS)
def test_split3_removes_share_and_keeps_one(coco, p):
    s = make_split(coco, "split3", p, seed=0)
    removed = Counter(a["image_id"] for a in s.removed)
    for img, anns in per_image(coco["annotations"]).items():
        n = len(anns)
        assert removed[img] == min(rhu(p * n), n - 1)
    assert s.stats["n_images_left_empty"] == 0


def test_split4_variant_counts_and_nesting(coco):
    expect = dict(easy=lambda n: 1 if n >= 2 else 0, hard=lambda n: n // 2, extreme=lambda n: n - 1)
    sets = []
    for v in SPLIT4_VARIANTS:
        s = make_split(coco, "split4", variant=v, seed=5)
        removed = Counter(a["image_id"] for a in s.removed)
        for img, anns in per_image(coco["annotations"]).items():
            assert removed[img] == expect[v](len(anns)), (v, img)
        assert s.stats["n_images_left_empty"] == 0
        sets.append({a["id"] for a in s.removed})
    assert sets[0] <= sets[1] <= sets[2]
    kept = Counter(a["image_id"] for a in instances(make_split(coco, "split4", variant="extreme").kept["annotations"]))
    assert set(kept.values()) == {1}


@pytest.mark.parametrize("p", PS)
def test_split5_keeps_one_per_image_and_is_maximal(coco, p):
    s = make_split(coco, "split5", p, seed=0)
    kept = per_image(s.kept["annotations"])
    assert set(kept) == set(per_image(coco["annotations"]))
    total = Counter(a["category_id"] for a in instances(coco["annotations"]))
    removed = Counter(a["category_id"] for a in s.removed)
    for c in total:
        target = rhu(p * total[c])
        assert removed[c] <= target
        if removed[c] < target:  # short of target only where every kept annotation of c is alone in its image
            assert all(len(kept[a["image_id"]]) == 1 for a in instances(s.kept["annotations"]) if a["category_id"] == c)
    rows = {r["id"]: r for r in s.stats["per_class"]}
    assert all(rows[c]["target_removed"] == rhu(p * total[c]) for c in total)


def test_split5_reaches_target_when_it_can(coco):
    s = make_split(coco, "split5", 0.3, seed=0)
    assert all(r["removed"] == r["target_removed"] for r in s.stats["per_class"])


def test_stats_against_independent_count(coco):
    s = make_split(coco, "split2", 0.5, seed=1)
    before, after = per_image(coco["annotations"]), per_image(s.kept["annotations"])
    assert s.stats["n_images_left_empty"] == sum(1 for i in before if i not in after) > 0
    assert s.stats == {**s.stats, **split_stats(coco, s.kept)}
    assert s.stats["n_images_with_annotations"] == len(before) and s.stats["n_crowd"] == 2
    for fmt in ("markdown", "text"):
        t = stats_table(s.stats, fmt)
        assert "cat1" in t and "left empty" in t
    with pytest.raises(InputError, match="valid: markdown, text"):
        stats_table(s.stats, "html")


# ---------------------------------------------------------------- splits: determinism

def _removed(s):
    return sorted(a["id"] for a in s.removed)


@pytest.mark.parametrize("rule, p, variant", [(r, 0.5, None) for r in P_RULES] + [("split4", None, "hard")])
def test_same_seed_same_split_whatever_the_input_order(coco, rule, p, variant):
    a = make_split(coco, rule, p, seed=11, variant=variant)
    shuffled = dict(coco, annotations=random.Random(0).sample(coco["annotations"], len(coco["annotations"])),
                    categories=coco["categories"][::-1])
    b = make_split(shuffled, rule, p, seed=11, variant=variant)
    assert _removed(a) == _removed(b) and a.stats["removed_sha256"] == b.stats["removed_sha256"]
    assert a.kept["annotations"] == make_split(coco, rule, p, seed=11, variant=variant).kept["annotations"]
    assert _removed(a) != _removed(make_split(coco, rule, p, seed=12, variant=variant))


PINNED = {"split1_p50_seed0": "d9d84989dc9613c7", "split5_p50_seed0": "396aa50eb3808949",
          "split4_easy_seed0": "232368906e24cf46"}


def test_pinned_checksums(coco):
    "Changing these means old split files can no longer be regenerated: only on purpose, with a note in the changelog."
    got = {s.name: s.stats["removed_sha256"] for s in [
        make_split(coco, "split1", 0.5, seed=0), make_split(coco, "split5", 0.5, seed=0),
        make_split(coco, "split4", variant="easy", seed=0)]}
    assert got == PINNED, got


# ---------------------------------------------------------------- splits: files and errors

def test_write_split_files_load_in_pycocotools(coco, tmp_path):
    s = make_split(coco, "split3", 0.5, seed=0)
    paths = write_split(s, tmp_path)
    assert {p.name for p in paths.values()} == {f"{s.name}.json", f"{s.name}_removed.json", f"{s.name}_stats.json"}
    with contextlib.redirect_stdout(io.StringIO()):
        kept, removed = COCO(str(paths["kept"])), COCO(str(paths["removed"]))
    assert len(kept.getAnnIds()) == len(s.kept["annotations"]) and len(removed.getAnnIds()) == len(s.removed)
    assert len(removed.getImgIds()) == len(coco["images"])
    assert json.loads(paths["stats"].read_text())["removed_sha256"] == s.stats["removed_sha256"]
    assert read_coco(paths["kept"])["annotations"] == s.kept["annotations"]


def test_generate_splits(coco, tmp_path):
    src = tmp_path / "train.json"
    src.write_text(json.dumps(coco))
    index = generate_splits(src, tmp_path / "out", rules=["split1", "split4", "split5"], ps=[0.3, 0.5], seed=2)
    names = [i["name"] for i in index]
    assert names == ["split1_p30_seed2", "split1_p50_seed2", "split4_easy_seed2", "split4_hard_seed2",
                     "split4_extreme_seed2", "split5_p30_seed2", "split5_p50_seed2"]
    for n in names:
        assert (tmp_path / "out" / f"{n}.json").is_file() and (tmp_path / "out" / f"{n}_removed.json").is_file()
    assert json.loads((tmp_path / "out" / "index.json").read_text())["splits"] == index
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("| id | class |") == len(names)
    assert index[0]["removed_sha256"] == make_split(coco, "split1", 0.3, seed=2).stats["removed_sha256"]
    one = generate_splits(src, tmp_path / "one", rules="split4-extreme")
    assert [i["name"] for i in one] == ["split4_extreme_seed0"]


@pytest.mark.parametrize("kw, msg", [
    (dict(rules=["split6"]), "valid: split1, split2, split3, split4, split5, split4-easy"),
    (dict(rules=["split1"], ps=[50]), r"in \[0, 1\]"),
    (dict(rules=["split2"], ps=[]), "no splits asked for"),
    (dict(rules=["split4"], variants=["medium"]), "valid: easy, hard, extreme"),
])
def test_generate_splits_bad_input_writes_nothing(coco, tmp_path, kw, msg):
    src = tmp_path / "train.json"
    src.write_text(json.dumps(coco))
    with pytest.raises(InputError, match=msg):
        generate_splits(src, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_make_split_bad_input(coco, tmp_path):
    with pytest.raises(InputError, match="split4 takes no p"):
        make_split(coco, "split4", 0.5, variant="easy")
    with pytest.raises(InputError, match="only split4 takes a variant"):
        make_split(coco, "split1", 0.5, variant="easy")
    with pytest.raises(InputError, match="needs p"):
        make_split(coco, "split3")
    broken = dict(coco, annotations=coco["annotations"] + [dict(id=10**6, image_id=100, category_id=9, bbox=[0, 0, 1, 1])])
    with pytest.raises(InputError, match="names category 9"):
        make_split(broken, "split1", 0.5)
    with pytest.raises(InputError, match="does not exist"):
        generate_splits(tmp_path / "missing.json", tmp_path / "out")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_coco(tmp_path / "bad.json")


# ---------------------------------------------------------------- COCO AP

def as_detections(anns, score=1.0):
    return [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=list(a["bbox"]), score=score)
            for a in instances(anns)]


def test_coco_ap_perfect_jittered_empty(coco):
    r = coco_ap(coco, as_detections(coco["annotations"]))
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0) and r["AP75"] == pytest.approx(1.0)
    assert all(v["AP"] == pytest.approx(1.0) for v in r["per_class"].values())
    assert set(r["per_class"]) == {1, 2, 3} and all(type(k) is int for k in r["per_class"])
    rng = np.random.default_rng(0)
    jittered = [dict(d, bbox=[v + float(rng.normal(0, 2)) for v in d["bbox"]], score=float(rng.uniform()))
                for d in as_detections(coco["annotations"])]
    j = coco_ap(coco, jittered)
    assert 0.05 < j["AP"] < 0.95 and j["AP50"] > j["AP"]
    e = coco_ap(coco, [])
    assert e["AP"] == 0.0 and e["AP50"] == 0.0 and all(v["AP"] == 0.0 for v in e["per_class"].values())
    assert e["n_detections"] == 0


def test_coco_ap_hand_case_and_undefined_values():
    gt = dict(images=[dict(id=1, width=100, height=100)], categories=[dict(id=1, name="a"), dict(id=2, name="b")],
              annotations=[dict(id=0, image_id=1, category_id=1, bbox=[10, 10, 50, 50])])  # id 0, no area/iscrowd
    dets = [dict(image_id=1, category_id=1, bbox=[10, 10, 50, 50], score=0.9),
            dict(image_id=1, category_id=1, bbox=[70, 70, 20, 20], score=0.95)]
    r = coco_ap(gt, dets)
    assert r["AP50"] == pytest.approx(0.5)  # precision 1/2 at the only recall level
    assert r["per_class"][2]["AP"] is None and r["per_class"][2]["n_gt"] == 0
    assert r["APs"] is None and r["APl"] is None  # the one box is medium
    assert coco_ap(gt, dets[:1])["AP"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="category ids not in the ground truth"):
        coco_ap(gt, [dict(dets[0], category_id=7)])
    with pytest.raises(InputError, match="valid: bbox, segm"):
        coco_ap(gt, dets, iou_type="keypoints")


def test_detections_from_torchvision_outputs(coco, tmp_path):
    cat_to_label, label_to_cat = category_label_map(coco["categories"])
    assert cat_to_label == {1: 1, 2: 2, 3: 3} and category_label_map(coco["categories"], background=False)[0][1] == 0
    outputs = {}
    for img, anns in per_image(coco["annotations"]).items():
        outputs[img] = dict(boxes=boxes_by_image(anns)[img], scores=torch.linspace(1, 0.5, len(anns)),
                            labels=torch.tensor([cat_to_label[a["category_id"]] for a in anns]))
    src = tmp_path / "gt.json"
    src.write_text(json.dumps(coco))
    assert coco_ap(src, outputs, label_to_cat=label_to_cat)["AP"] == pytest.approx(1.0)
    res = detections_to_coco([dict(boxes=torch.tensor([[10., 20., 40., 60.]]), scores=torch.tensor([0.7]),
                                   labels=torch.tensor([2]))], image_ids=[100], label_to_cat={2: 20})
    assert res == [dict(image_id=100, category_id=20, bbox=[10.0, 20.0, 30.0, 40.0], score=pytest.approx(0.7))]
    with pytest.raises(InputError, match="label 5 of image 100"):
        detections_to_coco({100: dict(boxes=torch.zeros(1, 4), scores=torch.ones(1), labels=torch.tensor([5]))},
                           label_to_cat=label_to_cat)
    with pytest.raises(InputError, match="image_ids aligned"):
        detections_to_coco([dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0))])


def test_coco_ap_on_subset_of_categories(coco):
    dets = [d for d in as_detections(coco["annotations"]) if d["category_id"] != 3]
    assert coco_ap(coco, dets, cat_ids=[1, 2])["AP"] == pytest.approx(1.0)
    assert coco_ap(coco, dets)["AP"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- proposal recall and mining quality

def test_proposal_recall_hand_case():
    gt_boxes = [torch.tensor([[0., 0, 10, 10], [20, 20, 40, 40], [60, 60, 80, 80]]), torch.tensor([[0., 0, 10, 10]])]
    gt_labels = [torch.tensor([1, 2, 3]), torch.tensor([3])]
    proposals = [torch.tensor([[0., 0, 10, 20],      # IoU exactly 0.5 with gt 0: counts (>=)
                               [60, 60, 79, 80],     # gt 2
                               [21, 21, 40, 40]]),   # gt 1, but ranked third
                 torch.zeros(0, 4)]
    r = proposal_recall(proposals, gt_boxes, gt_labels, known_classes=[1, 2])
    assert (r["n_known"], r["n_held_out"], r["recall_known"], r["recall_held_out"]) == (2, 2, 1.0, 0.5)
    assert r["recall"] == pytest.approx(3 / 4)
    assert r["per_class"][3] == dict(n=2, recalled=1, recall=0.5, known=False)
    r2 = proposal_recall(proposals, gt_boxes, gt_labels, known_classes=[1, 2], top_k=2)
    assert (r2["recall_known"], r2["recall_held_out"]) == (0.5, 0.5)
    r3 = proposal_recall({7: proposals[0]}, {7: gt_boxes[0]}, {7: gt_labels[0]}, iou=0.9)
    assert r3["recall"] == pytest.approx(2 / 3) and r3["recall_held_out"] is None and r3["n_held_out"] == 0
    with pytest.raises(InputError, match="3 gt boxes but 2 labels"):
        proposal_recall(proposals, gt_boxes, [torch.tensor([1, 2]), torch.tensor([3])])


def test_mining_quality_hand_case():
    removed = {1: torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]]), 2: torch.tensor([[0., 0, 50, 50]])}
    mined = {1: torch.tensor([[0., 0, 10, 9],      # removed 0
                              [0, 0, 10, 10],       # removed 0 again: correct, recovers nothing new
                              [60, 60, 70, 70]]),   # on a kept annotation
             3: torch.tensor([[5., 5, 9, 9]])}      # image with nothing removed
    kept = {1: torch.tensor([[60., 60, 70, 70]])}
    q = mining_quality(mined, removed, kept=kept)
    assert (q["n_mined"], q["n_correct"], q["n_removed"], q["n_recovered"], q["n_on_kept"]) == (4, 2, 3, 1, 1)
    assert q["precision"] == 0.5 and q["recovery"] == pytest.approx(1 / 3)
    assert mining_quality(mined, removed)["n_on_kept"] is None
    none = mining_quality({}, removed)
    assert none["recovery"] == 0.0 and none["precision"] is None
    aligned = mining_quality([mined[1], torch.zeros(0, 4)], [removed[1], removed[2]])
    assert (aligned["n_recovered"], aligned["n_removed"], aligned["n_correct"]) == (1, 3, 2)


def test_mining_quality_on_a_split(coco):
    s = make_split(coco, "split1", 0.5, seed=0)
    perfect = boxes_by_image(s.removed)
    q = mining_quality(perfect, s.removed, kept=s.kept)
    assert (q["recovery"], q["precision"], q["n_removed"]) == (1.0, 1.0, len(s.removed))
    shifted = {k: v + 1000 for k, v in perfect.items()}
    assert mining_quality(shifted, s.removed)["recovery"] == 0.0
    with pytest.raises(InputError, match="both keyed by image id"):
        mining_quality(list(perfect.values()), s.removed)
