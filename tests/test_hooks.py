"""Tests of workbench.models.hooks on timm ViTs (fused attention), open_clip towers, torchvision CNNs/detectors and a generator."""
import gc
import weakref
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from workbench.core import InputError
from workbench.models.hooks import Tap, Trace, attention_kind, attention_layers, layer_names, map_tensors


def hook_count(model: nn.Module) -> int:
    "Forward and forward-pre hooks registered anywhere in `model`."
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3).eval()


@pytest.fixture(scope="module")
def clip_vit():
    torch.manual_seed(0)
    return CLIP(32, CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
                CLIPTextCfg(context_length=16, vocab_size=100, width=64, heads=2, layers=2)).eval()


@pytest.fixture(scope="module")
def clip_rn():
    torch.manual_seed(0)
    return CLIP(32, CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=32, image_size=64),
                CLIPTextCfg(context_length=16, vocab_size=100, width=64, heads=2, layers=1)).eval()


class Generator(nn.Module):
    "A small DCGAN-style generator: latent (B, 16) -> image (B, 3, 32, 32)."
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 32 * 4 * 4)
        self.up1 = nn.ConvTranspose2d(32, 16, 4, 2, 1)
        self.act1 = nn.ReLU()
        self.up2 = nn.ConvTranspose2d(16, 8, 4, 2, 1)
        self.act2 = nn.ReLU()
        self.up3 = nn.ConvTranspose2d(8, 3, 4, 2, 1)

    def forward(self, z):
        x = self.fc(z).view(-1, 32, 4, 4)
        return torch.tanh(self.up3(self.act2(self.up2(self.act1(self.up1(x))))))


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return Generator().eval()


# ---------------------------------------------------------------- naming and validation

def test_layer_names_and_validation(vit, gen):
    assert layer_names(gen, nn.ConvTranspose2d) == ["up1", "up2", "up3"]
    assert layer_names(gen)[:2] == ["fc", "up1"]
    with pytest.raises(InputError, match=r"unknown layer 'blocks\.30\.attn'.*close valid names: .*blocks\.0\.attn"):
        Trace(vit, ["blocks.0", "blocks.30.attn"])
    with pytest.raises(InputError, match="valid top-level names: .*patch_embed"):
        Trace(vit, "zzz")
    with pytest.raises(InputError, match="not an attention module; attention layers: blocks.0.attn:attn"):
        Trace(vit, "blocks.0.mlp:attn")
    with pytest.raises(InputError, match="unknown suffix"):
        Trace(vit, "blocks.0.attn:weights")
    with pytest.raises(InputError, match="no layers"):
        Trace(vit, [])
    with pytest.raises(InputError, match="not a traced layer"):
        Trace(gen, "up1", edit={"up2": lambda n, o: o})
    assert attention_layers(gen) == []
    assert hook_count(vit) == hook_count(gen) == 0            # validation installs nothing


def test_map_tensors_keeps_containers():
    Pair = __import__("collections").namedtuple("Pair", "a b")
    x = OrderedDict(p=Pair(torch.ones(1), [torch.zeros(1), "s"]), q=(torch.ones(2),))
    y = map_tensors(lambda t: t + 1, x)
    assert type(y) is OrderedDict and type(y["p"]) is Pair and type(y["p"].b) is list and y["p"].b[1] == "s"
    assert y["p"].a.item() == 2 and y["q"][0].tolist() == [2, 2] and x["p"].a.item() == 1


# ---------------------------------------------------------------- timm (fused attention)

def test_timm_fused_attention_probabilities(vit):
    names = attention_layers(vit)
    assert names == [f"blocks.{i}.attn:attn" for i in range(3)]
    assert all(b.attn.fused_attn for b in vit.blocks), "the fused path must be the default, else this test is void"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = vit(x)
        with Trace(vit, names + [f"blocks.{i}.norm1" for i in range(3)]) as tr:
            assert not any(b.attn.fused_attn for b in vit.blocks)
            unfused = vit(x)
    assert all(b.attn.fused_attn for b in vit.blocks)
    torch.testing.assert_close(unfused, fused, atol=1e-5, rtol=1e-5)
    for i, blk in enumerate(vit.blocks):
        attn, h = tr[f"blocks.{i}.attn:attn"].output, tr[f"blocks.{i}.norm1"].output
        assert attn.shape == (2, 3, 17, 17)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 17))
        a = blk.attn                                             # manual softmax(q kᵀ / √d) from the qkv projection
        q, k, _ = a.qkv(h).reshape(2, 17, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(attn, (q @ k.transpose(-2, -1) * a.head_dim ** -0.5).softmax(-1))


@pytest.mark.parametrize("name, kw", [
    ("vit_small_patch14_reg4_dinov2", dict(img_size=28, depth=2)),          # register tokens
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=2)),                 # EvaAttention with rotary embeddings
    ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(1, 1, 1, 1))),  # windowed attention
])
def test_timm_attention_families(name, kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kw).eval()
    layers = attention_layers(m)
    assert layers and all(attention_kind(m.get_submodule(n[:-len(":attn")])) == "timm" for n in layers)
    x = torch.randn(1, 3, kw["img_size"], kw["img_size"])
    with torch.no_grad():
        fused = m(x)
        with Trace(m, layers) as tr:
            unfused = m(x)
    torch.testing.assert_close(unfused, fused, atol=1e-5, rtol=1e-4)
    for t in tr.values():
        assert t.calls == 1 and t.output.ndim == 4 and t.output.shape[-1] == t.output.shape[-2]
        torch.testing.assert_close(t.output.sum(-1), torch.ones(t.output.shape[:-1]))


def test_timm_attention_edit_reaches_downstream(vit):
    x = torch.randn(1, 3, 32, 32)
    uniform = lambda name, p: torch.full_like(p, 1 / p.shape[-1])
    with torch.no_grad(), Trace(vit, ["blocks.0.attn:attn", "blocks.0.attn.proj"], retain_input=True,
                                edit={"blocks.0.attn:attn": uniform}) as tr:
        edited = vit(x)
    mixed = tr["blocks.0.attn.proj"].input                       # (1, N, C): every token is the mean of v
    torch.testing.assert_close(mixed, mixed[:, :1].expand_as(mixed))
    torch.testing.assert_close(tr["blocks.0.attn:attn"].output, torch.full((1, 3, 17, 17), 1 / 17))
    with torch.no_grad():
        assert not torch.allclose(edited, vit(x), atol=1e-4)


# ---------------------------------------------------------------- open_clip

def mha_weights_by_hand(mha: nn.MultiheadAttention, x, mask=None):
    "Per-head softmax(q kᵀ / √d (+ mask)) of a batch-first self-attention from its in-projection."
    B, L, E = x.shape
    h, d = mha.num_heads, E // mha.num_heads
    q, k, _ = nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
    q, k = (t.reshape(B, L, h, d).transpose(1, 2) for t in (q, k))
    logits = q @ k.transpose(-2, -1) * d ** -0.5
    return (logits if mask is None else logits + mask).softmax(-1)


def test_open_clip_vit_visual_and_text(clip_vit):
    m = clip_vit
    assert attention_layers(m) == ["visual.transformer.resblocks.0.attn:attn", "visual.transformer.resblocks.1.attn:attn",
                                   "transformer.resblocks.0.attn:attn", "transformer.resblocks.1.attn:attn"]
    img = torch.randn(2, 3, 32, 32)
    text = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_img, ref_txt = m.encode_image(img), m.encode_text(text)
        layers = ["visual.transformer.resblocks.1", "visual.transformer.resblocks.0.ln_1", "visual.ln_post",
                  "visual.transformer.resblocks.0.attn:attn", "transformer.resblocks.1.ln_1", "transformer.resblocks.1.attn:attn"]
        with Trace(m, layers) as tr:
            out_img, out_txt = m.encode_image(img), m.encode_text(text)
    torch.testing.assert_close(out_img, ref_img, atol=1e-5, rtol=1e-5)   # need_weights path = fast path
    torch.testing.assert_close(out_txt, ref_txt, atol=1e-5, rtol=1e-5)
    assert tr["visual.transformer.resblocks.1"].output.shape == (2, 17, 64)
    assert tr["visual.ln_post"].output.shape == (2, 17, 64)                # open_clip normalises before pooling
    va = tr["visual.transformer.resblocks.0.attn:attn"].output
    assert va.shape == (2, 2, 17, 17)
    torch.testing.assert_close(va, mha_weights_by_hand(m.visual.transformer.resblocks[0].attn,
                                                       tr["visual.transformer.resblocks.0.ln_1"].output))
    ta = tr["transformer.resblocks.1.attn:attn"].output
    assert ta.shape == (2, 2, 16, 16)
    assert torch.all(ta.triu(1) == 0), "causal text mask: no attention to later tokens"
    torch.testing.assert_close(ta, mha_weights_by_hand(m.transformer.resblocks[1].attn,
                                                       tr["transformer.resblocks.1.ln_1"].output, m.attn_mask))
    assert hook_count(m) == 0


def test_mha_caller_gets_what_it_asked_for():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        ref_avg, ref_none = mha(x, x, x)[1], mha(x, x, x, need_weights=False)[1]
        with Trace(nn.Sequential(mha), "0:attn") as tr:
            avg = mha(x, x, x)[1]
            none = mha(x, x, x, None, False)[1]                 # need_weights passed positionally
            per_head = mha(x, x, x, average_attn_weights=False)[1]
    assert ref_none is None and none is None
    torch.testing.assert_close(avg, ref_avg)
    torch.testing.assert_close(per_head, tr["0:attn"].output)
    assert tr["0:attn"].calls == 3 and per_head.shape == (1, 2, 5, 5)


def test_open_clip_modified_resnet(clip_rn):
    v = clip_rn.visual
    assert attention_kind(v.attnpool) == "attnpool"
    assert attention_layers(clip_rn) == ["visual.attnpool:attn", "transformer.resblocks.0.attn:attn"]
    with torch.no_grad(), Trace(clip_rn, ["visual.layer4", "visual.attnpool", "visual.attnpool:attn"]) as tr:
        clip_rn.encode_image(torch.randn(2, 3, 64, 64))
    feat, pooled, w = tr["visual.layer4"].output, tr["visual.attnpool"].output, tr["visual.attnpool:attn"].output
    assert feat.shape == (2, 256, 2, 2) and pooled.shape == (2, 32)
    assert w.shape == (2, v.attnpool.num_heads, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, v.attnpool.num_heads, 5))
    # the pooled query's weights reproduce the pool's output: c_proj(concat_h(w[:, h, 0] @ v_h))
    p, h = v.attnpool, v.attnpool.num_heads
    tokens = feat.flatten(2).permute(0, 2, 1)
    tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + p.positional_embedding
    vals = p.v_proj(tokens).reshape(2, 5, h, -1).transpose(1, 2)              # (B, h, 5, d)
    mixed = (w[:, :, :1] @ vals).transpose(1, 2).reshape(2, -1)
    torch.testing.assert_close(p.c_proj(mixed), pooled, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- torchvision

def test_torchvision_resnet_layer3_and_clone():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), Trace(net, ["layer3", "bn1"]) as shared, Trace(net, "bn1", clone=True) as copied:
        net(x)
    assert shared["layer3"].output.shape == (1, 256, 4, 4)
    # resnet's ReLU is in-place: without clone the stored bn1 output is the tensor relu overwrote afterwards
    assert shared["bn1"].output.min() >= 0 and copied["bn1"].output.min() < 0
    torch.testing.assert_close(shared["bn1"].output, copied["bn1"].output.relu())


def test_torchvision_detector_containers_and_stop():
    torch.manual_seed(0)
    det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    images = [torch.rand(3, 96, 128)]
    with torch.no_grad(), Trace(det, ["backbone.body", "backbone", "rpn.head"]) as tr:
        det(images)
    body, fpn, (logits, deltas) = tr["backbone.body"].output, tr["backbone"].output, tr["rpn.head"].output
    assert isinstance(body, OrderedDict) and isinstance(fpn, OrderedDict) and list(fpn) == ["0", "1", "pool"]
    assert all(f.shape[1] == det.backbone.out_channels for f in fpn.values())
    assert isinstance(logits, list) and len(logits) == len(deltas) == len(fpn)
    # stop after the backbone: the RPN never runs, the call returns nothing; with grad on, stored tensors are detached
    with Trace(det, "backbone", stop=True) as tr, Trace(det, "rpn.head") as later:
        assert det(images) is None, "unreachable: the forward pass stops inside"
    assert later["rpn.head"].calls == 0 and tr["backbone"].calls == 1
    assert not any(f.requires_grad for f in tr["backbone"].output.values())
    with Trace(det, "backbone", stop=True, detach=False) as tr:
        det(images)
    assert all(f.requires_grad for f in tr["backbone"].output.values())
    assert hook_count(det) == 0


# ---------------------------------------------------------------- generator: edit and stop

def test_generator_edit_and_stop(gen):
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with Trace(gen, "act2", edit=lambda name, out: torch.zeros_like(out)) as tr:
            zeroed = gen(z)
        torch.testing.assert_close(zeroed, torch.tanh(gen.up3(torch.zeros(4, 8, 16, 16))))
        assert tr["act2"].output.abs().sum() == 0                 # the tap records what downstream saw
        untouched = gen(z)
        assert not torch.allclose(untouched, zeroed)
        with Trace(gen, layer_names(gen, nn.ConvTranspose2d)) as tr:
            torch.testing.assert_close(gen(z), untouched)          # tracing alone changes nothing
        assert [tuple(t.output.shape[-2:]) for t in tr.values()] == [(8, 8), (16, 16), (32, 32)]
        with Trace(gen, ["up2", "up1"], stop=True) as tr, Trace(gen, "up3") as later:
            gen(z)
        assert tr["up1"].calls == tr["up2"].calls == 1 and later["up3"].calls == 0 and later["up3"].output is None


# ---------------------------------------------------------------- release on exit and on exceptions

def test_hooks_released_on_exception(vit, clip_vit, gen):
    x = torch.randn(1, 3, 32, 32)
    for model, layers, run in [
        (vit, ["blocks.1", "blocks.1.attn:attn"], lambda: vit(x)),
        (clip_vit, ["visual.transformer.resblocks.0.attn:attn", "transformer.resblocks.0.attn:attn", "visual.ln_post"],
         lambda: (clip_vit.encode_image(x), clip_vit.encode_text(torch.zeros(1, 16, dtype=torch.long)))),
        (gen, ["up1", "up2"], lambda: gen(torch.randn(1, 16))),
    ]:
        forwards = {n: m.__dict__.get("forward") for n, m in model.named_modules()}
        with pytest.raises(RuntimeError, match="boom"):
            with Trace(model, layers) as tr:
                run()
                assert hook_count(model) > 0
                raise RuntimeError("boom")
        assert hook_count(model) == 0
        assert {n: m.__dict__.get("forward") for n, m in model.named_modules()} == forwards
        assert all(b.attn.fused_attn for b in vit.blocks)
        # an exception raised inside a hook (a failing edit) also releases everything, and a Trace is reusable
        def bad_edit(name, out): raise ValueError("bad edit")
        with pytest.raises(ValueError, match="bad edit"):
            with Trace(model, layers[-1], edit=bad_edit):
                run()
        assert hook_count(model) == 0
        with tr: run()
        assert all(t.calls == 1 for t in tr.values()) and hook_count(model) == 0
    assert all(b.attn.fused_attn for b in vit.blocks)


def test_stop_of_outer_trace_passes_through_inner(gen):
    z = torch.randn(1, 16)
    with Trace(gen, "up1", stop=True) as outer:
        with Trace(gen, "fc") as inner:
            gen(z)
        pytest.fail("the inner trace must not swallow the outer trace's StopForward")
    assert outer["up1"].calls == inner["fc"].calls == 1 and hook_count(gen) == 0


def test_trace_is_not_kept_alive_by_the_model(gen):
    with Trace(gen, ["up1", "up2"]) as tr:
        gen(torch.randn(1, 16))
    ref = weakref.ref(tr)
    del tr
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------- memory stays flat

def live_tensors():
    gc.collect()
    ts = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]
    return len(ts), sum(t.untyped_storage().nbytes() for t in ts)


@pytest.mark.parametrize("grad", [False, True])
def test_memory_flat_over_many_passes(gen, grad):
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    layers = ["fc", "act1", "up2", "up3"]
    with torch.set_grad_enabled(grad), Trace(gen, layers, detach=not grad, retain_input=True) as tr:
        y = gen(z)
        first = weakref.ref(tr["up2"].output)
        y = gen(z)
        gc.collect()
        assert first() is None, "the previous pass's output must be released, not accumulated"
        for i in range(200):
            y = gen(z)
            if i == 10: before = live_tensors()
        after = live_tensors()
    assert after == before
    assert all(isinstance(t, Tap) and t.calls == 202 for t in tr.values())
    assert y.requires_grad == grad and tr["up3"].output.requires_grad == grad
