"""workbench.viz.browsers.directions driven through its widgets: a tiny random DCGAN (32 px, z_dim 8), random directions,
made-up scores and a synthetic-pairs object. ε, the page, the order and the highlight redraw the grid, sorting by a
score puts its best direction first, the pairs tab's "only rejected" lists only the rejected samples, a page renders
well under a second, and bad inputs are one line naming the input."""
import time
import types

import pytest
import torch

from conftest import assert_names_argument
from workbench.methods.directions import direction_grid
from workbench.models.gan import DCGANGenerator, generator_adapter
from workbench.viz.browsers.directions import DirectionExplorer

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG"
K, N = 12, 10


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    G = generator_adapter(DCGANGenerator(32, z_dim=8, channel_base=64, channel_max=16).eval())
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(K, 8, generator=g)
    score = torch.rand(K, 2, generator=g)
    scores = [dict(index=k, sign=s, score=float(score[k, j]), mask_fraction=0.3) for k in range(K) for j, s in enumerate((1, -1))]
    dev = [dict(index=k, sign=1, max_f_beta=float(f)) for k, f in enumerate(torch.rand(K, generator=g))]
    keep = torch.tensor([True, False, True, True, False, False, True, True, False, True])
    pairs = types.SimpleNamespace(
        pool_images=torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g),
        pool_shifted=torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g),
        pool_raw_masks=torch.rand(N, 32, 32, generator=g) > 0.5, pool_masks=torch.rand(N, 32, 32, generator=g) > 0.7,
        pool_verdicts={"size": keep | torch.tensor([False, True] * 5), "histogram": keep | torch.tensor([True, False] * 5), "keep": keep})
    return G, dirs, scores, dev, pairs


def explorer(setup, **kw):
    G, dirs, scores, dev, pairs = setup
    return DirectionExplorer(G, kw.pop("directions", dirs), scores=kw.pop("scores", scores), pairs=kw.pop("pairs", pairs),
                             dev_scores=kw.pop("dev_scores", dev), **kw)


def test_grid_is_direction_grid_and_eps_redraws(setup):
    G, dirs = setup[:2]
    b = explorer(setup)
    assert b.image.value[:4] == PNG and b.page_directions() == list(range(8))
    grid = b.grid()
    assert grid.dtype == torch.uint8 and grid.shape == (8, 3, 4, 3, 32, 32)
    assert torch.equal(grid, direction_grid(G, dirs, G.sample_latents(range(4)), list(range(8)), 6.0))
    assert torch.equal(grid[:, 1], grid[:1, 1].expand(8, -1, -1, -1, -1))          # the middle column is G(z) in every row
    before = bytes(b.image.value)
    b.eps.value = 11.0
    assert b.image.value[:4] == PNG and bytes(b.image.value) != before and "<td>11</td>" in b.info.value
    assert not torch.equal(b.grid(), grid)


def test_every_control_redraws(setup):
    b = explorer(setup)
    steps = [("eps", 3.0), ("page", 1), ("sort", "label-free score"), ("highlight", (b.page_directions()[2],)),
             ("sort", "dev score"), ("page", 1), ("sort", "index")]
    for attr, value in steps:
        before = bytes(b.image.value)
        getattr(b, attr).value = value
        assert b.image.value[:4] == PNG and bytes(b.image.value) != before, attr


def test_sorting_puts_the_best_first(setup):
    _, _, scores, dev, _ = setup
    b = explorer(setup)
    b.page.value = 1
    b.sort.value = "label-free score"
    best = max(scores, key=lambda r: r["score"])
    assert b.page.value == 0 and b.page_directions()[0] == best["index"]
    by_best_sign = {}
    for r in scores: by_best_sign[r["index"]] = max(by_best_sign.get(r["index"], -1), r["score"])
    assert b.order() == sorted(range(K), key=lambda k: -by_best_sign[k])
    assert f"{best['score']:.3f}" in b.info.value and f"d{best['index']}" in b.info.value
    b.sort.value = "dev score"
    assert b.page_directions()[0] == max(dev, key=lambda r: r["max_f_beta"])["index"]
    b.sort.value = "index"
    assert b.order() == list(range(K))


def test_sort_options_follow_the_scores_given(setup):
    b = explorer(setup, scores=None, dev_scores=None)
    assert list(b.sort.options) == ["index"] and b.sort.disabled and "score" not in b.info.value
    b = explorer(setup, dev_scores=None)
    assert list(b.sort.options) == ["index", "label-free score"]


def test_highlight_goes_to_the_direction_and_frames_it(setup):
    b = explorer(setup)
    before = bytes(b.image.value)
    b.highlight.value = (10,)
    assert b.page.value == 1 and b.picked == [10] and 10 in b.page_directions() and bytes(b.image.value) != before
    assert "d10" in b.info.value and "font-weight:bold" in b.info.value
    b.highlight.value = (10, 3)                       # the one added is on the other page: go there
    assert b.page.value == 0 and b.picked == [10, 3]


def test_a_page_renders_well_under_a_second(setup):
    b = explorer(setup)
    b.render()                                        # warm: matplotlib's fonts and caches
    t0 = time.perf_counter()
    b.eps.value = 7.5                                 # a page not seen: 8 directions × 4 latents at 32 px, generated and drawn
    took = time.perf_counter() - t0
    assert took < 1.0, f"one page took {took:.2f} s"


def test_pairs_tab_only_rejected(setup):
    pairs = setup[4]
    keep = pairs.pool_verdicts["keep"]
    b = explorer(setup)
    assert b.tabs.titles == ("directions", "synthetic pairs") and b.pairs_image.value[:4] == PNG
    assert b.shown_pairs() == list(range(N)) and b.page_pairs() == list(range(8)) and b.pair_page.max == 1
    b.pair_page.value = 1
    before = bytes(b.pairs_image.value)
    b.only_rejected.value = True
    rejected = [i for i in range(N) if not keep[i]]
    assert b.shown_pairs() == rejected and b.page_pairs() == rejected and b.pair_page.value == 0 and b.pair_page.disabled
    assert bytes(b.pairs_image.value) != before and f"{len(rejected)} rejected" in b.pairs_info.value
    b.only_rejected.value = False
    assert b.shown_pairs() == list(range(N)) and b.pair_page.max == 1


def test_pairs_figure_shows_each_verdict(setup):
    pairs = setup[4]
    b = explorer(setup)
    b.only_rejected.value = True
    fig = b.pairs_figure()
    lines = [t.get_text() for t in fig.axes[0].texts]
    import matplotlib.pyplot as plt
    plt.close(fig)
    v = pairs.pool_verdicts
    assert all(line.endswith("→ rejected") for line in lines) and len(lines) == int((~v["keep"]).sum())
    i = b.page_pairs()[0]
    assert lines[0] == f"size {'✓' if v['size'][i] else '✗'} · histogram {'✓' if v['histogram'][i] else '✗'} → rejected"


def test_without_pairs_one_tab(setup):
    b = explorer(setup, pairs=None)
    assert b.tabs.titles == ("directions",) and not hasattr(b, "pairs_image")


def test_all_kept_only_rejected_is_empty(setup):
    pairs = setup[4]
    ok = types.SimpleNamespace(**{**vars(pairs), "pool_verdicts": {**pairs.pool_verdicts, "keep": torch.ones(N, dtype=torch.bool)}})
    b = explorer(setup, pairs=ok)
    b.only_rejected.value = True
    assert b.pairs_image.value == b"" and "no sample was rejected" in b.pairs_info.value


def test_bad_inputs(setup):
    G, dirs, _, _, pairs = setup
    assert_names_argument(lambda: DirectionExplorer(G, dirs[0]), "directions")
    assert_names_argument(lambda: DirectionExplorer(G, torch.randn(3, 5)), "directions")
    assert_names_argument(lambda: DirectionExplorer(G, torch.zeros(0, 8)), "directions")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, z=torch.randn(2, 7)), "z")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, z=torch.randn(8)), "z")
    for eps in (0, -2.0, float("nan"), "big"):
        assert_names_argument(lambda: DirectionExplorer(G, dirs, eps=eps), "eps")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, per_page=0), "per_page")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, scores=[dict(index=K, sign=1, score=0.5, mask_fraction=0.3)]), "scores[0]")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, scores=[dict(index=0, sign=2, score=0.5, mask_fraction=0.3)]), "scores[0]")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, dev_scores=[dict(index=0, sign=1)]), "dev_scores[0]")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, pairs=object()), "pairs")
    bad = lambda **kw: types.SimpleNamespace(**{**vars(pairs), **kw})
    assert_names_argument(lambda: DirectionExplorer(G, dirs, pairs=bad(pool_images=pairs.pool_images.float())), "pairs.pool_images")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, pairs=bad(pool_masks=pairs.pool_masks[:3])), "pairs.pool_masks")
    assert_names_argument(lambda: DirectionExplorer(G, dirs, pairs=bad(pool_verdicts={"keep": pairs.pool_verdicts["keep"]})),
                          "pairs.pool_verdicts")
    assert_names_argument(lambda: DirectionExplorer(torch.nn.Linear(8, 8), dirs), "G")
    assert_names_argument(lambda: DirectionExplorer(object(), dirs), "G")


def test_signs_as_strings_and_a_raw_generator_module(setup):
    G, dirs = setup[:2]
    b = DirectionExplorer(G.module, dirs, scores=[dict(index=4, sign="−", score=0.9, mask_fraction=0.2)], pairs=None)
    b.sort.value = "label-free score"
    assert b.page_directions()[0] == 4 and "− score 0.900" in b.row_label(4) and b.row_label(0) == "no score"
