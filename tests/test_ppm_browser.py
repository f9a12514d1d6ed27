"""workbench.viz.browsers.ppm driven through its widgets: a mining log written by hand over rectangle images with a Split-1,
and one from a few real SparseDet steps; every count the browser shows is checked against `eval.boxes.mining_quality`."""
import matplotlib
matplotlib.use("Agg")
import pytest
import torch

from workbench.core import InputError
from workbench.viz.browsers.ppm import PPMBrowser
from workbench.viz.figures import plot_mining, plot_running_quality
from workbench.eval.boxes import box_hits, mining_quality
from workbench.methods.sparsedet import MiningLog, SparseDetConfig, build_detector, evaluate_mining, train_detector
from workbench.data.splits import SparseDetectionDataset
from workbench.data.fixtures import rectangle_samples

PNG = b"\x89PNG"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def setup():
    ds = SparseDetectionDataset.from_split(rectangle_samples(8, seed=3), "split1", 0.5, seed=0)
    rm, kp = ds.removed_boxes(), ds.kept_boxes()
    with_removed = [i for i in rm if len(rm[i])]
    a, b = with_removed[:2]
    log = MiningLog(tau_ppm=0.8, min_objectness=0.3)
    miss = torch.tensor([[0, 0, 4, 4.]])
    log.add(10, a, miss, torch.tensor([0.9]))                                       # early: one miss
    log.add(20, a, torch.cat([rm[a][:1], miss]), torch.tensor([0.95, 0.6]))          # later: a hit, the miss below τ
    log.add(20, b, torch.cat([kp[b][:1] if len(kp[b]) else miss, rm[b][:1]]), torch.tensor([0.85, 0.4]))
    return ds, log, a, b


def test_latest_mining_and_hits():
    log = MiningLog(0.8, 0.3)
    log.add(3, 7, torch.tensor([[0, 0, 10, 10.], [20, 20, 30, 30]]), torch.tensor([0.9, 0.5]))
    assert log.latest(7, 2)[2] is None
    boxes, scores, it = log.latest(7, 3)
    assert it == 3 and boxes.tolist() == [[0, 0, 10, 10]] and scores.tolist() == pytest.approx([0.9])
    assert len(log.latest(7, 3, 0.45)[0]) == 2
    assert torch.equal(log.latest(7, 3)[0], log.mined(3)[7])                   # one rule for one image and for all
    hit, rec = box_hits(torch.tensor([[0, 0, 10, 10.], [50, 50, 60, 60]]), torch.tensor([[0, 0, 10, 11.]]))
    assert hit.tolist() == [True, False] and rec.tolist() == [True]
    assert box_hits(torch.zeros(0, 4), torch.tensor([[0, 0, 1, 1.]]))[1].tolist() == [False]


def test_browser_state_follows_widgets(setup):
    ds, log, a, b = setup
    br = PPMBrowser.from_dataset(log, ds)
    assert [v for _, v in br.image_id.options] == sorted([a, b], key=str)
    assert br.iteration.value == 20 and br.threshold.value == pytest.approx(0.8)
    br.image_id.value = a
    assert br.image.value[:4] == PNG and br.curve.value[:4] == PNG
    c = br.current()
    assert len(c["mined"]) == 1 and c["hit"].tolist() == [True] and int(c["recovered"].sum()) == 1
    assert len(c["kept"]) == len(ds.kept_boxes()[a]) and len(c["removed"]) == len(ds.removed_boxes()[a])
    # the summary is eval.boxes.mining_quality over all images at this iteration and threshold
    q = mining_quality(log.mined(20, 0.8), ds.removed_boxes(), kept=ds.kept_boxes())
    assert q == br.quality() == evaluate_mining(log, ds, 20, 0.8)
    assert f"recovery {q['recovery']:.3f}" in br.summary.value and f"({q['n_correct']}/{q['n_mined']} mined boxes)" in br.summary.value
    before = br.image.value
    br.threshold.value = 0.5                     # the miss at 0.6 appears
    assert len(br.current()["mined"]) == 2 and br.image.value != before
    assert "mined pseudo-positives: 2 (on a removed annotation 1)" in br.info.value
    br.iteration.value = 10                      # the early record: one miss, image b not mined yet
    assert br.current()["hit"].tolist() == [False] and br.current()["record_iteration"] == 10
    assert br.quality()["n_correct"] == 0 and "precision 0.000" in br.summary.value
    br.image_id.value = b
    assert br.current()["record_iteration"] is None and "no mining yet" in br.info.value
    br.show_curve.value = False
    assert br.curve.value == b""


def test_running_curve_points(setup):
    ds, log, a, _ = setup
    for t in range(30, 300, 10): log.add(t, a, torch.zeros(0, 4), torch.zeros(0))
    br = PPMBrowser.from_dataset(log, ds, curve_points=5)
    rows = br.running()
    assert len(rows) == 5 and rows[0]["iteration"] == 10 and rows[-1]["iteration"] == 290
    assert all(set(r) >= {"recovery", "precision", "iteration"} for r in rows)
    fig = plot_running_quality(rows)
    assert len(fig.axes[0].lines) == 2
    png = br.curve.value                          # the curve depends on the threshold only
    br.image_id.value = [v for _, v in br.image_id.options if v != br.image_id.value][0]
    br.iteration.value = 10
    assert br.curve.value is png
    br.threshold.value = 0.5
    assert br.curve.value[:4] == PNG and br.curve.value != png


def test_only_with_removed_and_errors(setup):
    ds, log, a, b = setup
    empty = MiningLog(0.8, 0.5)
    br = PPMBrowser.from_dataset(empty, ds, only_with_removed=True)   # no records: every image with removed annotations
    rm = ds.removed_boxes()
    assert [v for _, v in br.image_id.options] == [i for i in sorted(rm, key=str) if len(rm[i])]
    assert br.curve.value == b"" and "no mining yet" in br.info.value
    with pytest.raises(InputError, match="not among"):
        PPMBrowser(log, [ds.samples[0].image], ds.kept_boxes(), ds.removed_boxes())
    with pytest.raises(InputError, match="SparseDetectionDataset"):
        PPMBrowser.from_dataset(log, ds.samples)
    with pytest.raises(InputError, match="MiningLog"):
        PPMBrowser({}, ds.samples, {}, {})


def test_plot_mining_draws_every_box(setup):
    ds, log, a, _ = setup
    s = ds.samples[a - 1]
    mined = torch.tensor([[1, 1, 9, 9.], [20, 20, 30, 30]])
    fig = plot_mining(s.image, ds.kept_boxes()[a], ds.removed_boxes()[a], mined, torch.tensor([0.9, 0.85]))
    ax = fig.axes[0]
    styles = [p.get_linestyle() for p in ax.patches]
    assert len(ax.patches) == len(ds.kept_boxes()[a]) + len(ds.removed_boxes()[a]) + 2
    assert styles.count("--") == len(ds.removed_boxes()[a])
    assert [t.get_text() for t in ax.texts] == ["0.90", "0.85"]


def test_browser_over_a_real_training_log():
    ds = SparseDetectionDataset.from_split(rectangle_samples(8, seed=0), "split1", 0.5, seed=0)
    cfg = SparseDetConfig(tau_ppm=0.3, tau_obj=0.2, log_min_objectness=0.2)
    res = train_detector(build_detector(2, "mobilenet_v3_small_fpn", min_size=64, max_size=64), ds, cfg, mode="sparsedet",
                         steps=3, batch_size=2, warmup_ppm=1, progress=False, num_threads=1)
    mlog = res.parts["mining_log"]
    br = PPMBrowser.from_dataset(mlog, ds)
    assert br.iteration.options == tuple(mlog.iterations())
    assert br.threshold.min == pytest.approx(0.2)
    assert br.quality() == evaluate_mining(mlog, ds, br.iteration.value, 0.3)
    assert br.image.value[:4] == PNG


def many_boxes_log(ds, n=150, seed=0):
    "A log whose first image with removed annotations has them (jittered, high objectness) and `n` random boxes down to 0.05."
    g = torch.Generator().manual_seed(seed)
    rm = ds.removed_boxes()
    iid = next(i for i in rm if len(rm[i]))
    xy = torch.randint(0, 48, (n, 2), generator=g).float()
    noise = torch.cat([xy, xy + torch.randint(6, 16, (n, 2), generator=g)], 1)
    log = MiningLog(tau_ppm=0.8, min_objectness=0.05)
    log.add(10, iid, torch.cat([rm[iid], noise]), torch.cat([torch.full((len(rm[iid]),), 0.99), 0.05 + 0.9 * torch.rand(n, generator=g)]))
    return log, iid


def test_low_threshold_draws_a_readable_number_of_boxes(setup, monkeypatch):
    import workbench.viz.browsers.ppm as ppm
    from torchvision.ops import box_iou
    ds = setup[0]
    log, iid = many_boxes_log(ds)
    drawn = []
    def spy(image, kept, removed, mined, objectness, *a, labels=True, **kw):
        drawn.append((len(mined), labels))
        return plot_mining(image, kept, removed, mined, objectness, *a, labels=labels, **kw)
    monkeypatch.setattr(ppm, "plot_mining", spy)
    br = PPMBrowser.from_dataset(log, ds)
    br.threshold.value = br.threshold.min                        # every mined box passes
    c = br.current()
    n = len(c["mined"])
    assert n > 100 and drawn[-1] == (20, True) and len(c["drawn"]) == 20
    d = c["drawn"]
    iou = box_iou(c["mined"][d], c["mined"][d]).fill_diagonal_(0)
    assert iou.max() <= 0.5                                      # NMS'd for drawing
    assert c["objectness"][d].tolist() == sorted(c["objectness"][d].tolist(), reverse=True)
    assert float(c["objectness"][d][0]) == pytest.approx(0.99)   # the highest first
    assert f"drawn: the 20 highest of {n} after NMS at IoU 0.5, {n - 20} not drawn" in br.info.value
    assert f"mined pseudo-positives: {n}" in br.info.value       # the counts are over every mined box
    assert br.quality() == evaluate_mining(log, ds, 10, br.threshold.value)
    br.max_boxes.value = 5
    assert drawn[-1] == (5, True) and "drawn: the 5 highest" in br.info.value
    br.show_labels.value = False
    assert drawn[-1] == (5, False)
    br.threshold.value = 0.97                                    # only the removed annotations' hits are left (the rest < 0.95)
    assert "drawn: all" in br.info.value and drawn[-1][0] == len(br.current()["mined"])
    raw = PPMBrowser.from_dataset(log, ds, draw_nms=None, max_boxes=1000)
    raw.threshold.value = raw.threshold.min
    assert drawn[-1][0] == n
    with pytest.raises(InputError, match="max_boxes"): PPMBrowser.from_dataset(log, ds, max_boxes=0)


def label_fits(w) -> bool:
    "Whether a control's description fits its label column: ipywidgets' default column is 80 px, about ten characters."
    width = w.style.description_width
    if width in ("initial", "auto"): return True
    return len(w.description) <= 10 if not width else float(width.removesuffix("px")) >= 8 * len(w.description)


def test_images_at_natural_size_and_labels_fit(setup):
    ds, log, _, _ = setup
    br = PPMBrowser.from_dataset(log, ds)
    for im in (br.image, br.curve):                              # a flex box stretches an item unless it aligns itself
        assert (im.layout.align_self, im.layout.width, im.layout.height) == ("flex-start", None, None)
    assert label_fits(br.threshold) and label_fits(br.max_boxes)
    assert br.threshold.description == "objectness >"
