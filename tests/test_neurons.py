"Unit statistics and masks of generator neurons: a unit's quantile threshold and its masks live at the same resolution."
import torch
import torch.nn.functional as F
from torch import nn

from workbench.methods.neurons import score_units, unit_masks, unit_statistics
from workbench.models.generators import TorchGenerator


class Spiky(nn.Module):
    "A 16x16 layer whose unit 0 fires on 4 single pixels per image (about 1.6% of its pixels), all of nearly equal height."
    def __init__(self):
        super().__init__()
        self.l16 = nn.Identity()
        self.rgb = nn.Conv2d(2, 3, 1)

    def forward(self, z):
        B = z.shape[0]
        spikes = torch.zeros(B, 16 * 16)
        pos = (z[:, :4].abs() * 997).long() % 256
        spikes.scatter_(1, pos, (1 + 0.01 * z[:, :1]).expand(-1, 4))
        x = torch.stack([spikes.view(B, 16, 16), z[:, 4:5, None].expand(-1, 16, 16)], 1)
        x = self.l16(x)
        return torch.tanh(self.rgb(F.interpolate(x, scale_factor=4)))


def test_a_peaky_unit_keeps_its_mask_on_its_own_top_images():
    torch.manual_seed(0)
    gen = TorchGenerator(Spiky(), 8, layers=["l16"])
    st = unit_statistics(gen, range(256), k=8)
    seeds = st.topk_seeds["l16"][0]
    _, masks = unit_masks(gen, st, "l16", [0], seeds, q=0.99)
    # with the raw 16x16 quantile (about the spike height) every upsampled mask was empty
    assert masks.flatten(1).any(1).all()
    _, random_masks = unit_masks(gen, st, "l16", [0], range(1000, 1064), q=0.99)
    assert 0.004 < random_masks.float().mean() < 0.02       # the 0.99 threshold leaves about 1% of the pixels


def test_units_with_empty_masks_are_left_out_of_the_ranking():
    class FirstPixel:
        def masked_similarity(self, images, masks, prompts):
            return torch.ones(len(images), len(prompts))   # rates every masked image alike, even a flat one
    torch.manual_seed(0)
    gen = TorchGenerator(Spiky(), 8, layers=["l16"])
    st = unit_statistics(gen, range(256), k=8)
    st.quantiles["l16"][0] = 1e6                            # unit 0: nothing can pass its threshold
    sc = score_units(gen, st, FirstPixel(), ["airplanes"], q=0.99)
    assert ("l16", 0) in [(l, u) for l, u, _ in sc.excluded()]
    assert 0 not in [u for _, u, _ in sc.ranking("airplanes")]
    assert sc.best_per_layer("airplanes")[0][1] != 0


def test_each_unit_is_scored_with_its_own_threshold():
    class Area:
        def masked_similarity(self, images, masks, prompts):
            return masks.float().mean(dim=(1, 2, 3))[:, None].expand(-1, len(prompts))
    torch.manual_seed(0)
    gen = TorchGenerator(Spiky(), 8, layers=["l16"])
    st = unit_statistics(gen, range(256), k=8)
    sc = score_units(gen, st, Area(), ["area"], q=0.99, batch_size=64)
    for unit in (0, 1):
        _, m = unit_masks(gen, st, "l16", [unit], st.topk_seeds["l16"][unit], q=0.99)
        assert torch.allclose(sc.per_image["l16"][unit, :, 0], m.float().mean(dim=(1, 2, 3))), unit


def test_neuron_browser_prompt_table_stays_compact():
    "Ten scored prompts: the info panel scrolls inside a box no taller than the ranking list, the prompt in the box first."
    from workbench.viz.browsers.neurons import NeuronBrowser

    class Quarter:
        def masked_similarity(self, images, masks, prompts):     # each prompt: the mask's share in one quarter of the image
            H, W = masks.shape[-2:]
            out = []
            for i, _ in enumerate(prompts):
                r, c = divmod(i % 4, 2)
                out.append(masks[:, :, r * H // 2:(r + 1) * H // 2, c * W // 2:(c + 1) * W // 2].float().mean(dim=(1, 2, 3)))
            return torch.stack(out, 1)
    torch.manual_seed(0)
    gen = TorchGenerator(Spiky(), 8, layers=["l16"])
    st = unit_statistics(gen, range(64), k=4)
    prompts = [f"prompt {i}" for i in range(10)]
    sc = score_units(gen, st, Quarter(), prompts, k=4)
    b = NeuronBrowser(gen, st, sc, k=4)
    assert (b.info.layout.max_height, b.info.layout.overflow) == ("160px", "auto")
    assert (b.image.layout.align_self, b.image.layout.width) == ("flex-start", None)
    assert b.info.value.count("<tr>") == 11 and "<b>prompt 0</b>" in b.info.value
    b.prompt.value = "prompt 7"
    rows = b.info.value.split("<tr>")[2:]
    assert rows[0].startswith("<td><b>prompt 7</b></td>") and len(rows) == 10
    st.quantiles["l16"][0] = 1e6                                 # unit 0: an empty mask on every top image
    b = NeuronBrowser(gen, st, score_units(gen, st, Quarter(), prompts, k=4), k=4)
    assert "left out of the ranking: l16 #0" in b.info.value and "threshold (q=0.99)" in b.info.value   # the note, and the unit's own info
