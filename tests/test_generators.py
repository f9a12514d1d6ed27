"""Tests of workbench.models.generators: the adapter, the plain-PyTorch StyleGAN2 against an independent float64 reference of
the official op semantics, and the safe loader on pickles built with the official container layout (no official code)."""
import collections
import copy
import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core import InputError
from workbench.models.generators import (LayerInfo, StyleGAN2Adapter, StyleGAN2Generator, TorchGenerator,
                                         UnsafePickleError, as_seeds, load_stylegan2_pkl, read_network_pickle,
                                         record_state_dict, seed_latents, to_uint8, to_unit)
from workbench.models.hooks import Trace


def small_G(seed=0, c_dim=0, architecture="skip", conv_clamp=256, num_layers=2, resolution=64, randomize=True):
    "A tiny StyleGAN2; with `randomize`, every parameter and buffer (but the FIR filters) gets random values."
    torch.manual_seed(seed)
    G = StyleGAN2Generator(z_dim=32, c_dim=c_dim, w_dim=32, img_resolution=resolution, img_channels=3,
                           mapping_kwargs=dict(num_layers=num_layers),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32, conv_clamp=conv_clamp,
                                                 architecture=architecture)).eval()
    if randomize:   # at the scales the equalised learning rate implies: mapping fc weights ~ N(0, 1) / lr_multiplier
        with torch.no_grad():
            for name, t in G.state_dict().items():
                scale = 100.0 if name.startswith("mapping.fc") and name.endswith("weight") else \
                    10.0 if name.startswith("mapping.fc") else 0.5 if t.ndim else 1.0
                if not name.endswith("resample_filter"): t.copy_(torch.randn_like(t) * scale)
    return G.requires_grad_(False)


@pytest.fixture(scope="module")
def G():
    return small_G()


# ---------------------------------------------------------------------------------------------------------------
# The adapter

def test_shapes_and_determinism(G):
    gen = StyleGAN2Adapter(G, truncation_psi=0.8)
    test_z = gen.sample_latents([5, 9])
    assert test_z.shape == (2, 32) and test_z.dtype == torch.float32
    assert torch.equal(test_z[1], torch.from_numpy(np.random.RandomState(9).randn(32)).float())
    a = gen.generate([5, 9, 11], batch_size=2)
    assert a.shape == (3, 3, 64, 64) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, gen.generate([5, 9, 11], batch_size=2))                  # same seeds → same images
    torch.testing.assert_close(gen.generate([11, 5])[0], a[2], atol=1e-5, rtol=0)  # independent of the batch
    assert not torch.allclose(a[0], a[1])
    # random noise changes images, const noise does not
    z = seed_latents([1, 1], 32)
    with torch.no_grad():
        r = G(z, noise_mode="random")
        c = G(z, noise_mode="const")
    assert not torch.allclose(r[0], r[1]) and torch.equal(c[0], c[1])
    u8 = to_uint8(a)
    assert u8.dtype == torch.uint8 and u8.shape == a.shape
    assert torch.equal(u8, (a * 127.5 + 128).clamp(0, 255).to(torch.uint8))
    assert 0 <= to_unit(a).min() and to_unit(a).max() <= 1


def test_conv_layers_match_hooks(G):
    gen = StyleGAN2Adapter(G)
    all_layers = gen.layers()
    assert [l.name for l in all_layers] == ["synthesis.b4.conv1"] + [f"synthesis.b{r}.conv{i}" for r in (8, 16, 32, 64) for i in (0, 1)]
    layers = gen.conv_layers(min_resolution=16)
    assert [l.resolution for l in layers] == [16, 16, 32, 32, 64, 64]
    assert gen.conv_layers(min_resolution=64) == [LayerInfo("synthesis.b64.conv0", 8, 64), LayerInfo("synthesis.b64.conv1", 8, 64)]
    with torch.no_grad(), Trace(gen.module, [l.name for l in all_layers]) as tr:
        gen(gen.sample_latents([0, 1, 2]))
    for l in all_layers:
        assert tr[l.name].output.shape == (3, l.channels, l.resolution, l.resolution), l
    # channels follow min(channel_base / res, channel_max) = min(512 / res, 32)
    assert [l.channels for l in all_layers] == [32, 32, 32, 32, 32, 16, 16, 8, 8]


def test_torch_generator_wraps_any_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16 * 4 * 4), nn.Unflatten(1, (16, 4, 4)), nn.ConvTranspose2d(16, 8, 4, 2, 1),
                        nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Sigmoid())
    gen = TorchGenerator(net, z_dim=8, output_range=(0, 1))
    assert gen.resolution == 16 and gen.img_channels == 3
    assert gen.layers() == [LayerInfo("2", 8, 8), LayerInfo("4", 3, 16)]
    assert gen.conv_layers() == [LayerInfo("4", 3, 16)]
    imgs = gen.generate(range(3))
    torch.testing.assert_close(imgs, net(seed_latents(range(3), 8)).detach() * 2 - 1)
    assert TorchGenerator(net, 8, layers=["1"]).layers() == [LayerInfo("1", 16, 4)]
    with pytest.raises(InputError, match="not a feature map"):
        TorchGenerator(net, 8, layers=["0"])
    with pytest.raises(InputError, match="output_range"):
        TorchGenerator(net, 8, output_range=(0, 255))


def test_seed_and_class_validation():
    assert as_seeds(np.array([1, 2])) == [1, 2]
    for bad in ([2**32], [1.5], [True]):
        with pytest.raises(InputError, match=r"\[0, 2\*\*32\)"):
            as_seeds(bad)
    Gc = small_G(c_dim=3, resolution=16)
    with pytest.raises(InputError, match="c_dim=3"):
        StyleGAN2Adapter(Gc)
    a = StyleGAN2Adapter(Gc, class_idx=0).generate([0, 1])
    b = StyleGAN2Adapter(Gc, class_idx=2).generate([0, 1])
    assert not torch.allclose(a, b)
    with pytest.raises(InputError, match="unconditional"):
        StyleGAN2Adapter(small_G(resolution=16), class_idx=1)


# ---------------------------------------------------------------------------------------------------------------
# Names: the official state dict layout, written out from training/networks.py

def official_keys(resolution, num_mapping, c_dim=0, architecture="skip"):
    keys = {f"mapping.fc{i}.{p}" for i in range(num_mapping) for p in ("weight", "bias")} | {"mapping.w_avg"}
    if c_dim: keys |= {"mapping.embed.weight", "mapping.embed.bias"}
    layer = lambda pre: {f"{pre}.{p}" for p in ("weight", "bias", "noise_strength", "noise_const", "resample_filter",
                                                "affine.weight", "affine.bias")}
    rgb = lambda pre: {f"{pre}.{p}" for p in ("weight", "bias", "affine.weight", "affine.bias")}
    for r in [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]:
        b = f"synthesis.b{r}"
        keys |= {f"{b}.resample_filter"} | layer(f"{b}.conv1")
        keys |= {f"{b}.const"} if r == 4 else layer(f"{b}.conv0")
        if architecture == "skip" or r == resolution: keys |= rgb(f"{b}.torgb")
        if architecture == "resnet" and r > 4: keys |= {f"{b}.skip.weight", f"{b}.skip.resample_filter"}
    return keys


@pytest.mark.parametrize("architecture", ["skip", "orig", "resnet"])
def test_state_dict_has_official_names(architecture):
    G = small_G(c_dim=2, architecture=architecture, num_layers=3, resolution=32, randomize=False)
    sd = G.state_dict()
    assert set(sd) == official_keys(32, 3, c_dim=2, architecture=architecture)
    assert sd["synthesis.b8.conv0.weight"].shape == (32, 32, 3, 3)
    assert sd["synthesis.b8.conv0.noise_const"].shape == (8, 8) and sd["synthesis.b8.conv0.noise_strength"].shape == ()
    assert sd["synthesis.b8.conv0.affine.weight"].shape == (32, 32)
    assert sd["synthesis.b32.torgb.weight"].shape == (3, 16, 1, 1) and sd["synthesis.b4.const"].shape == (32, 4, 4)
    assert sd["mapping.fc0.weight"].shape == (32, 64) and sd["mapping.embed.weight"].shape == (32, 2)  # z ⊕ embedded c
    f = torch.tensor([1.0, 3, 3, 1])
    assert torch.equal(sd["synthesis.b8.resample_filter"], torch.outer(f, f) / 64)
    assert torch.equal(sd["synthesis.b8.conv1.affine.bias"], torch.ones(32))         # bias_init=1
    assert 90 < sd["mapping.fc0.weight"].std() < 110                                   # randn / lr_multiplier 0.01


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic: an independent float64 reference of the official ops, written from their documented semantics
# (torch_utils/ops/upfirdn2d.py, conv2d_resample.py, bias_act.py; training/networks.py), deliberately plain.

def ref_fir(taps):
    t = torch.tensor(taps, dtype=torch.float64)
    return torch.outer(t, t) / t.sum() ** 2


def ref_upfirdn2d(x, f, up, pad0, pad1, gain):
    "1. insert up-1 zeros after each pixel, 2. pad with zeros, 3. convolve with f (true convolution), no down-sampling."
    B, C, H, W = x.shape
    u = torch.zeros(B, C, H * up + pad0 + pad1, W * up + pad0 + pad1, dtype=x.dtype)
    u[:, :, pad0:pad0 + H * up:up, pad0:pad0 + W * up:up] = x
    fh, fw = f.shape
    oh, ow = u.shape[2] - fh + 1, u.shape[3] - fw + 1
    out = torch.zeros(B, C, oh, ow, dtype=x.dtype)
    for a in range(fh):
        for b in range(fw):
            out += u[:, :, a:a + oh, b:b + ow] * f[fh - 1 - a, fw - 1 - b] * gain
    return out


def ref_correlate(x, w, pad):
    "Cross-correlation of one sample x (C, H, W) with w (O, C, k, k), zero padding `pad`, by shifted sums."
    C, H, W = x.shape
    O, _, k, _ = w.shape
    xp = torch.zeros(C, H + 2 * pad, W + 2 * pad, dtype=x.dtype)
    xp[:, pad:pad + H, pad:pad + W] = x
    oh, ow = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    out = torch.zeros(O, oh, ow, dtype=x.dtype)
    for a in range(k):
        for b in range(k):
            out += torch.einsum("oc,chw->ohw", w[:, :, a, b], xp[:, a:a + oh, b:b + ow])
    return out


def ref_bias_act(x, b, act, gain, clamp):
    x = x + b.reshape(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu": x = torch.where(x >= 0, x, 0.2 * x)
    x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def ref_fc(x, P, pre, lr=1.0, act="linear"):
    w = P[pre + ".weight"] * (lr / math.sqrt(P[pre + ".weight"].shape[1]))
    x = x @ w.T
    return ref_bias_act(x, P[pre + ".bias"] * lr, act, math.sqrt(2) if act == "lrelu" else 1.0, None)


def ref_synthesis_layer(x, w, P, pre, up, conv_clamp, gain=1.0, taps=(1, 3, 3, 1)):
    weight = P[pre + ".weight"]
    styles = ref_fc(w, P, pre + ".affine")
    out = []
    for i in range(len(x)):
        wi = weight * styles[i].reshape(1, -1, 1, 1)
        wi = wi / torch.sqrt((wi ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if up == 1:
            out.append(ref_correlate(x[i], wi, pad=1))
        else:   # conv2d_resample, up=2, padding 1 w.r.t. the up-sampled image, flip_weight=False: a true convolution
            f = ref_fir(taps)
            fw = f.shape[0]
            u = ref_upfirdn2d(x[i:i + 1], f, 2, 1 + (fw + 1) // 2, 1 + (fw - 2) // 2, gain=4)[0]
            out.append(ref_correlate(u, wi.flip([2, 3]), pad=0))
    x = torch.stack(out) + P[pre + ".noise_const"] * P[pre + ".noise_strength"]
    return ref_bias_act(x, P[pre + ".bias"], "lrelu", math.sqrt(2) * gain, conv_clamp * gain if conv_clamp else None)


def ref_torgb(x, w, P, pre, conv_clamp):
    styles = ref_fc(w, P, pre + ".affine") / math.sqrt(x.shape[1])
    out = torch.stack([ref_correlate(x[i], P[pre + ".weight"] * styles[i].reshape(1, -1, 1, 1), pad=0) for i in range(len(x))])
    return ref_bias_act(out, P[pre + ".bias"], "linear", 1.0, conv_clamp)


def ref_generator(P, z, c, *, resolution, num_layers, architecture, conv_clamp, psi=1.0, cutoff=None):
    "The whole StyleGAN2-ADA generator from a state dict `P` (official names), noise_mode='const', in float64."
    norm = lambda t: t / torch.sqrt((t ** 2).mean(dim=1, keepdim=True) + 1e-8)
    x = norm(z)
    if c is not None: x = torch.cat([x, norm(ref_fc(c, P, "mapping.embed"))], dim=1)
    for i in range(num_layers): x = ref_fc(x, P, f"mapping.fc{i}", lr=0.01, act="lrelu")
    res = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
    num_ws = 2 * len(res)   # one per conv layer (1 + 2 per later block) plus the last ToRGB
    ws = x[:, None].repeat(1, num_ws, 1)
    n = num_ws if cutoff is None else cutoff
    ws[:, :n] = P["mapping.w_avg"] + psi * (ws[:, :n] - P["mapping.w_avg"])
    img, h, wi = None, None, 0
    for r in res:
        b = f"synthesis.b{r}"
        skip_or_last = architecture == "skip" or r == resolution
        if r == 4:
            h = ref_synthesis_layer(P[b + ".const"][None].repeat(len(z), 1, 1, 1), ws[:, 0], P, b + ".conv1", 1, conv_clamp)
            nconv = 1
        else:
            y = None
            if architecture == "resnet":
                f = ref_fir((1, 3, 3, 1))
                wsk = P[b + ".skip.weight"] / math.sqrt(P[b + ".skip.weight"].shape[1])
                u = ref_upfirdn2d(h, f, 2, 2, 1, gain=4)
                y = torch.stack([ref_correlate(u[i], wsk, pad=0) for i in range(len(u))]) * math.sqrt(0.5)
            h = ref_synthesis_layer(h, ws[:, wi], P, b + ".conv0", 2, conv_clamp)
            h = ref_synthesis_layer(h, ws[:, wi + 1], P, b + ".conv1", 1, conv_clamp,
                                    gain=math.sqrt(0.5) if architecture == "resnet" else 1.0)
            if y is not None: h = y + h
            nconv = 2
            if img is not None: img = ref_upfirdn2d(img, ref_fir((1, 3, 3, 1)), 2, 2, 1, gain=4)
        if skip_or_last:
            rgb = ref_torgb(h, ws[:, wi + nconv], P, b + ".torgb", conv_clamp)
            img = rgb if img is None else img + rgb
        wi += nconv
    return img


@pytest.mark.parametrize("architecture,conv_clamp,c_dim,psi,cutoff", [
    ("skip", 0.8, 0, 1.0, None),      # clamping active in most layers
    ("skip", None, 3, 0.7, 3),        # conditional, truncation with cutoff
    ("resnet", 1.5, 0, 0.5, None),
    ("orig", 256, 0, 1.0, None),
])
def test_matches_independent_reference(architecture, conv_clamp, c_dim, psi, cutoff):
    G = small_G(seed=1, c_dim=c_dim, architecture=architecture, conv_clamp=conv_clamp, num_layers=3, resolution=32)
    z = seed_latents([3, 4], 32)
    c = F.one_hot(torch.tensor([0, 2]), 3).float() if c_dim else None
    with torch.no_grad():
        ours = G(z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")
    P = {k: v.double() for k, v in G.state_dict().items()}
    ref = ref_generator(P, z.double(), c.double() if c is not None else None, resolution=32, num_layers=3,
                        architecture=architecture, conv_clamp=conv_clamp, psi=psi, cutoff=cutoff)
    assert ours.shape == ref.shape == (2, 3, 32, 32)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours.double(), ref, atol=2e-4 * max(1.0, ref.abs().max().item()), rtol=1e-4)


def test_reference_clamps_somewhere():
    "The clamped case of the comparison above really clamps: some conv outputs sit at ±conv_clamp."
    G = small_G(seed=1, conv_clamp=0.8, num_layers=3, resolution=32)
    with torch.no_grad(), Trace(G, ["synthesis.b16.conv1"]) as tr:
        G(seed_latents([3, 4], 32), noise_mode="const")
    assert (tr["synthesis.b16.conv1"].output.abs() == 0.8).float().mean() > 0.05


def test_w_avg_tracking_and_training_mode():
    G = small_G(resolution=16).train()
    before = G.mapping.w_avg.clone()
    G(seed_latents(range(4), 32), skip_w_avg_update=True)
    assert torch.equal(G.mapping.w_avg, before)
    G(seed_latents(range(4), 32))
    assert not torch.equal(G.mapping.w_avg, before)
    G2 = small_G(resolution=16, randomize=False).train().requires_grad_(True)
    loss = G2(seed_latents(range(2), 32), noise_mode="random").square().mean()
    loss.backward()
    assert all(p.grad is not None for p in G2.parameters())


# ---------------------------------------------------------------------------------------------------------------
# The loader, on pickles with the official container layout, built here without any official code

class _Persistent:
    "Pickles like an official persistent object: `_reconstruct_persistent_obj(meta)` with the module source in `meta`."
    def __init__(self, class_name, state, src):
        self.class_name, self.state, self.src = class_name, state, src

    def __reduce__(self):
        from torch_utils.persistence import _reconstruct_persistent_obj
        meta = dict(type="class", version=6, module_src=self.src, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


def as_persistent(module, src, init_kwargs=None):
    "An official-looking record of `module`: its `__dict__` with children as persistent objects, constructor args, numpy gains."
    from dnnlib.util import EasyDict
    state = {k: (copy.copy(v) if isinstance(v, (dict, set)) else v) for k, v in vars(module).items()
             if k not in ("_modules", "init_kwargs")}
    for k in ("weight_gain", "act_gain"):
        if k in state: state[k] = np.float64(state[k])
    state["_modules"] = collections.OrderedDict(
        (k, as_persistent(m, src) if m is not None else None) for k, m in module._modules.items())
    state["_init_args"] = ()
    state["_init_kwargs"] = EasyDict(init_kwargs or {})
    return _Persistent("Generator" if type(module) is StyleGAN2Generator else type(module).__name__, state, src)


@pytest.fixture
def official_modules(monkeypatch, tmp_path):
    """Stand-ins for the official `torch_utils.persistence` and `dnnlib.util`, registered under the official names,
    whose `_reconstruct_persistent_obj` runs `module_src` as the official one does; returns the marker path that the
    `module_src` of the pickles built here would create."""
    marker = tmp_path / "EXECUTED"
    persistence = types.ModuleType("torch_utils.persistence")
    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})
        return meta["state"]
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    class EasyDict(dict):
        def __getattr__(self, name):
            try: return self[name]
            except KeyError: raise AttributeError(name)
        def __setattr__(self, name, value): self[name] = value
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    for name, mod in [("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return marker


def write_official_pickle(path, G, marker, protocol=4, mutate=None):
    "A training snapshot like the official one: dict of G, D, G_ema, augment_pipe, training_set_kwargs."
    from dnnlib.util import EasyDict
    src = f"open({str(marker)!r}, 'w').write('module_src was executed')"
    kw = copy_kwargs(G.init_kwargs, EasyDict)
    g_ema = as_persistent(G, src, kw)
    if mutate: mutate(g_ema)
    D = nn.Module(); D.register_parameter("w", nn.Parameter(torch.randn(4, 4)))
    snapshot = dict(G=as_persistent(G, src, kw), D=as_persistent(D, src), G_ema=g_ema, augment_pipe=None,
                    training_set_kwargs=EasyDict(path="~/datasets/x.zip", resolution=G.img_resolution, xflip=False))
    path.write_bytes(pickle.dumps(snapshot, protocol=protocol))
    return path


def copy_kwargs(kw, EasyDict):
    return EasyDict({k: EasyDict(v) if isinstance(v, dict) else v for k, v in kw.items()})


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_loads_official_layout_without_running_it(official_modules, tmp_path, protocol):
    marker = official_modules
    G = small_G(seed=2, c_dim=2, num_layers=3, resolution=32)
    path = write_official_pickle(tmp_path / "network-snapshot.pkl", G, marker, protocol=protocol)
    loaded = load_stylegan2_pkl(path)
    assert not marker.exists(), "the loader ran module_src"
    assert type(loaded) is StyleGAN2Generator and not loaded.training
    assert loaded.init_kwargs == G.init_kwargs
    z, c = seed_latents(range(3), 32), F.one_hot(torch.tensor([0, 1, 1]), 2).float()
    with torch.no_grad():
        for psi in (1.0, 0.6):
            assert torch.equal(loaded(z, c, truncation_psi=psi, noise_mode="const"), G(z, c, truncation_psi=psi, noise_mode="const"))
    for k, v in G.state_dict().items(): assert torch.equal(loaded.state_dict()[k], v), k
    data = read_network_pickle(path)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["training_set_kwargs"]["resolution"] == 32 and data["D"].class_name == "Module"
    assert set(record_state_dict(data["G_ema"])) == set(G.state_dict())
    assert not marker.exists()
    # the test is meaningful: the ordinary unpickler with the official-style modules does run module_src
    with open(path, "rb") as f: pickle.load(f)
    assert marker.exists()


def test_refuses_mismatched_networks(official_modules, tmp_path):
    marker = official_modules
    G = small_G(resolution=16)
    def rename(rec): rec.state["_modules"]["mapping"].class_name = "MappingNetworkV3"
    def clamp(rec): rec.state["_modules"]["synthesis"].state["_modules"]["b8"].state["_modules"]["conv0"].state["conv_clamp"] = 999
    def extra(rec): rec.state["_modules"]["synthesis"].state["_modules"]["input"] = _Persistent("SynthesisInput", {}, "")
    def drop(rec): del rec.state["_modules"]["synthesis"].state["_modules"]["b8"].state["_modules"]["torgb"].state["_parameters"]["bias"]
    for mutate, msg in [(rename, "MappingNetworkV3 where StyleGAN2 has a MappingNetwork"), (clamp, "conv_clamp is 999"),
                        (extra, "synthesis.input"), (drop, "synthesis.b8.torgb.bias")]:
        path = write_official_pickle(tmp_path / f"{mutate.__name__}.pkl", G, marker, mutate=mutate)
        with pytest.raises(InputError, match=msg):
            load_stylegan2_pkl(path)
    ok = write_official_pickle(tmp_path / "ok.pkl", G, marker)
    with pytest.raises(InputError, match="no 'G_emma'; found: G, D, G_ema"):
        load_stylegan2_pkl(ok, key="G_emma")
    assert isinstance(load_stylegan2_pkl(ok, key="G"), StyleGAN2Generator)
    assert not marker.exists()


class _Call:
    "Pickles as a call of `fn(*args)`."
    def __init__(self, fn, *args): self.fn, self.args = fn, args
    def __reduce__(self): return self.fn, self.args


def test_refuses_forbidden_globals(tmp_path):
    marker = tmp_path / "PWNED"
    cases = [
        (_Call(os.system, f"touch {marker}"), "posix.system" if os.name == "posix" else "system"),
        (_Call(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        (_Call(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
        (_Call(getattr, "x", "upper"), "builtins.getattr"),
        (_Call(torch.load, str(tmp_path / "x.pt")), "torch.serialization.load"),
    ]
    for i, (obj, name) in enumerate(cases):
        path = tmp_path / f"evil{i}.pkl"
        # hidden deep inside an otherwise normal-looking snapshot
        path.write_bytes(pickle.dumps({"G_ema": {"state": collections.OrderedDict(a=[1, 2, {"x": obj}])}}, protocol=4))
        with pytest.raises(UnsafePickleError, match=f"refuses global '{name}'") as e:
            load_stylegan2_pkl(path)
        assert str(path) in str(e.value)
        assert not marker.exists()


def test_refuses_code_inside_tensor_storage(tmp_path):
    "The bytes of an embedded storage go through torch.load(weights_only=True): a pickle of code there is refused too."
    marker = tmp_path / "PWNED"
    blob = pickle.dumps(_Call(os.system, f"touch {marker}"))
    path = tmp_path / "evil_storage.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Call(torch.storage._load_from_bytes, blob)}))
    with pytest.raises(UnsafePickleError, match="embedded tensor storage"):
        load_stylegan2_pkl(path)
    path.write_bytes(pickle.dumps({"G_ema": _Call(torch._utils._rebuild_tensor_v2, [1, 2], 0, (2,), (1,), False, None)}))
    with pytest.raises(UnsafePickleError, match="not a storage"):
        load_stylegan2_pkl(path)
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_stylegan2_pkl(tmp_path / "missing.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="cannot be read"):
        load_stylegan2_pkl(tmp_path / "junk.pkl")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"G_ema": {"a": 1}}))
    with pytest.raises(InputError, match="expected a recorded Generator, found dict"):
        load_stylegan2_pkl(tmp_path / "plain.pkl")
