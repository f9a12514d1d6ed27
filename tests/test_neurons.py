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
