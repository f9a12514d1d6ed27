"Tests of workbench.models.registry: names, offline weights errors, weights-only loading, checkpoints, known models."
import os
import pickle
import socket
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import workbench.models.registry as reg
from workbench.core import InputError
from workbench.models.registry import (ModelSpec, WeightsMissingError, expected_weights_path, find_weights,
                                       known_models, load_model, parse_model_name, read_checkpoint, register_model,
                                       resolve_spec, save_checkpoint)

TINY_VIT = "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"
# a small open_clip architecture with the shape of a real tag's model, so weights files stay small
SMALL_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=224, layers=1, width=64, patch_size=32),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(autouse=True)
def offline_settings(tmp_path, monkeypatch):
    "A fresh weights folder, downloads off, CPU, and any network connection attempt fails the test."
    wdir = tmp_path / "weights"
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(wdir))
    monkeypatch.setenv("WORKBENCH_ALLOW_DOWNLOAD", "false")
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")
    def no_network(*a, **k): raise AssertionError(f"network access attempted: {a}")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return wdir


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model, sd):
    own = model.state_dict()
    assert set(own) == set(sd)
    for k, v in sd.items(): assert torch.equal(own[k], v.to(own[k].dtype)), k


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name,spec", [
    ("clip:ViT-B-32@laion2b_s34b_b79k", ModelSpec("clip", "ViT-B-32", "laion2b_s34b_b79k")),
    ("clip:RN50", ModelSpec("clip", "RN50")),
    ("timm:vit_base_patch16_224.dino", ModelSpec("timm", "vit_base_patch16_224", "dino")),
    ("timm:vit_tiny_patch16_224", ModelSpec("timm", "vit_tiny_patch16_224")),
    ("wb:aerial-gan", ModelSpec("wb", "aerial-gan")),
    ("file:ckpt/a.bin", ModelSpec("file", path=Path("ckpt/a.bin"))),
    ("runs/r1/model.safetensors", ModelSpec("file", path=Path("runs/r1/model.safetensors"))),
])
def test_parse_names(name, spec):
    assert parse_model_name(name) == spec
    if spec.source != "file": assert parse_model_name(spec.name) == spec


@pytest.mark.parametrize("bad", ["ViT-B-32", "clip:", "clip:ViT-B-32@", "timm:vit.a.b", "wb:", "wb:a b", "foo:bar", ""])
def test_bad_names(bad):
    with pytest.raises(InputError, match="expected clip:ARCH@TAG"): parse_model_name(bad)


def test_unknown_names_suggest_valid_ones():
    with pytest.raises(InputError, match="vit_base_patch16_224"): resolve_spec(parse_model_name("timm:vit_bse_patch16_224"))
    with pytest.raises(InputError, match="valid: .*dino"): resolve_spec(parse_model_name("timm:vit_base_patch16_224.dinov9"))
    with pytest.raises(InputError, match="ViT-B-32"): resolve_spec(parse_model_name("clip:ViT-B-23@openai"))
    with pytest.raises(InputError, match="valid: openai, yfcc15m, cc12m"): resolve_spec(parse_model_name("clip:RN50@laion"))
    with pytest.raises(InputError, match="needs a weights tag.*laion2b_s34b_b79k"): load_model("clip:ViT-B-32")
    with pytest.raises(InputError, match="unknown workbench model wb:nope"): load_model("wb:nope", pretrained=False)


def test_timm_default_tag_when_pretrained():
    assert resolve_spec(parse_model_name("timm:vit_tiny_patch16_224")).tag == "augreg_in21k_ft_in1k"
    assert resolve_spec(parse_model_name("timm:vit_tiny_patch16_224"), pretrained=False).tag is None


# ---------------------------------------------------------------- random weights + preprocessing

def test_timm_random_weights_and_transform(offline_settings):
    lm = load_model("timm:vit_tiny_patch16_224", pretrained=False)
    assert lm.weights is None and not lm.model.training and lm.tokenizer is None
    assert not offline_settings.exists()   # nothing looked up or created
    x = lm.preprocess(Image.new("RGB", (300, 200), (120, 30, 200)))
    assert x.shape == (3, 224, 224)
    # augreg ViTs normalise with mean=std=0.5: a constant 120 pixel maps to (120/255-0.5)/0.5
    assert torch.allclose(x[0], torch.full((224, 224), (120 / 255 - 0.5) / 0.5), atol=1e-5)
    with torch.no_grad(): assert lm.model(x[None]).shape == (1, 1000)


def test_timm_tag_sets_head_and_normalisation():
    lm = load_model("timm:vit_base_patch16_224.dino", pretrained=False, depth=1)
    assert lm.model.num_classes == 0                       # DINO weights have no classifier
    mean = lm.preprocess.transforms[-1].mean.tolist()
    assert mean == pytest.approx([0.485, 0.456, 0.406])


def test_clip_random_weights_transform_tokenizer():
    import open_clip
    lm = load_model("clip:ViT-S-32", pretrained=False)
    assert lm.weights is None and not lm.model.training
    x = lm.preprocess(Image.new("RGB", (320, 240)))
    assert x.shape == (3, 224, 224)
    tokens = lm.tokenizer(["a photo of a dog"])
    assert tokens.shape == (1, 77)
    with torch.no_grad():
        assert lm.model.encode_image(x[None]).shape == (1, 384)
        assert lm.model.encode_text(tokens).shape == (1, 384)
    # OpenAI weights were trained with QuickGELU: the tag's architecture uses it
    rn = load_model("clip:ViT-B-16@openai", pretrained=False)
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in rn.model.modules())


# ---------------------------------------------------------------- offline: missing weights

def test_missing_timm_weights_error(offline_settings, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("hub called while offline"))
    with pytest.raises(WeightsMissingError) as ei: load_model("timm:vit_base_patch16_224.dino")
    msg, e = str(ei.value), ei.value
    assert isinstance(e, InputError) and "\n" not in msg
    expected = offline_settings / "timm" / "vit_base_patch16_224.dino.safetensors"
    assert "timm:vit_base_patch16_224.dino" in msg and str(expected) in msg
    assert "Hugging Face repo timm/vit_base_patch16_224.dino" in msg and "model.safetensors" in msg
    assert "allow_download" in msg and "pretrained=False" in msg
    assert e.expected == expected and e.model == "timm:vit_base_patch16_224.dino"
    assert not offline_settings.exists()


def test_dry_run_builds_random_weights_when_pretrained_are_missing(offline_settings, monkeypatch):
    "Only a dry run (`workbench run --dry-run`) falls back to random weights; a normal load stays an error."
    monkeypatch.setenv("WORKBENCH_DRY_RUN", "1")
    lm = load_model("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert lm.weights is None and lm.spec.tag == "augreg_in21k_ft_in1k"
    assert next(lm.model.parameters()).device.type == "cpu"
    monkeypatch.setenv("WORKBENCH_DRY_RUN", "0")
    with pytest.raises(WeightsMissingError): load_model("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")


def test_missing_clip_weights_error(offline_settings):
    with pytest.raises(WeightsMissingError) as ei: load_model("clip:ViT-B-32@laion2b_s34b_b79k")
    msg = str(ei.value)
    assert str(offline_settings / "clip" / "ViT-B-32@laion2b_s34b_b79k.safetensors") in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "open_clip_model.safetensors" in msg


def test_missing_mocov3_and_wb_weights_error(offline_settings):
    with pytest.raises(WeightsMissingError, match=r"vit-b-300ep\.pth\.tar.*vit_base_patch16_224\.mocov3\.pth"):
        load_model("timm:vit_base_patch16_224.mocov3")
    register_model("wb:test-unobtainable", obtain="run nbs/99_x.ipynb")(lambda: nn.Linear(2, 2))
    with pytest.raises(WeightsMissingError, match=r"wb/test-unobtainable\.safetensors.*run nbs/99_x\.ipynb"):
        load_model("wb:test-unobtainable")


def test_weights_file_argument_missing():
    with pytest.raises(InputError, match="does not exist"): load_model(TINY_VIT, weights="/nonexistent/w.safetensors")


# ---------------------------------------------------------------- weights found in the weights folder

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_weights_dir(offline_settings, suffix):
    torch.manual_seed(1)
    ref = load_model(TINY_VIT, pretrained=False).model
    sd = _state(ref)
    path = expected_weights_path(parse_model_name(TINY_VIT)).with_suffix(suffix)
    path.parent.mkdir(parents=True)
    save_file(sd, path) if suffix == ".safetensors" else torch.save({"model": sd}, path)
    assert find_weights(parse_model_name(TINY_VIT)) == path
    torch.manual_seed(2)
    lm = load_model(TINY_VIT)
    assert lm.weights == path and lm.name == TINY_VIT
    _assert_same_weights(lm.model, sd)


def test_timm_head_dropped_when_num_classes_changes(offline_settings):
    sd = _state(load_model(TINY_VIT, pretrained=False).model)
    path = expected_weights_path(parse_model_name(TINY_VIT)); path.parent.mkdir(parents=True); save_file(sd, path)
    lm = load_model(TINY_VIT, num_classes=3)
    assert lm.model.head.weight.shape == (3, 192)
    assert torch.equal(lm.model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def test_timm_weights_resampled_to_another_image_size(tmp_path):
    "timm's checkpoint filter runs as in timm: 224-pixel weights fit a 160-pixel model (position embeddings resampled)."
    sd = _state(load_model(TINY_VIT, pretrained=False).model)
    path = tmp_path / "w.safetensors"; save_file(sd, path)
    lm = load_model(TINY_VIT, weights=path, img_size=160)
    assert lm.model.pos_embed.shape == (1, 1 + 10 * 10, 192) and sd["pos_embed"].shape == (1, 1 + 14 * 14, 192)
    assert torch.equal(lm.model.pos_embed[:, 0], sd["pos_embed"][:, 0])
    assert torch.equal(lm.model.blocks[0].mlp.fc1.weight, sd["blocks.0.mlp.fc1.weight"])
    assert lm.preprocess(Image.new("RGB", (300, 300))).shape == (3, 160, 160)


def test_clip_weights_wrapped_like_a_training_checkpoint(offline_settings):
    name = "clip:ViT-B-32@laion2b_s34b_b79k"
    sd = _state(load_model(name, pretrained=False, **SMALL_CLIP).model)
    path = expected_weights_path(parse_model_name(name)).with_suffix(".pt")
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    lm = load_model(name, **SMALL_CLIP)
    assert lm.weights == path and lm.tokenizer is not None
    _assert_same_weights(lm.model, sd)
    assert lm.preprocess.transforms[-1].mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_mocov3_official_layout_is_converted(offline_settings):
    "A checkpoint laid out like MoCo v3's (module.base_encoder.*, momentum encoder, MLP head, optimizer state)."
    name = "timm:vit_base_patch16_224.mocov3"
    sd = _state(load_model(name, pretrained=False, depth=1).model)
    ckpt = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    ckpt |= {f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in sd.items()}
    ckpt |= {"module.base_encoder.head.0.weight": torch.randn(4, 768), "module.predictor.0.weight": torch.randn(4, 4)}
    path = expected_weights_path(parse_model_name(name)).with_suffix(".pth"); path.parent.mkdir(parents=True)
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": ckpt,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "scaler": {"scale": 65536.0}}, path)
    lm = load_model(name, depth=1)
    _assert_same_weights(lm.model, sd)
    assert lm.model.num_classes == 0
    assert lm.preprocess.transforms[-1].mean.tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_mismatched_checkpoint_names_file_and_keys(tmp_path):
    sd = _state(load_model(TINY_VIT, pretrained=False).model)
    sd.pop("norm.weight"); sd["extra.bias"] = torch.zeros(3); sd["head.bias"] = torch.zeros(7)
    path = tmp_path / "bad.safetensors"; save_file(sd, path)
    with pytest.raises(InputError) as ei: load_model(TINY_VIT, weights=path)
    msg = str(ei.value)
    assert str(path) in msg and "norm.weight" in msg and "extra.bias" in msg and "head.bias (7,) vs (1000,)" in msg


# ---------------------------------------------------------------- weights-only loading

class _RunsCode:
    "Unpickling this calls os.system: what a malicious model file does."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def _malicious_files(tmp_path, marker):
    sd = {"w": torch.ones(2)}
    a = tmp_path / "zip.pt"; torch.save({"state_dict": sd, "payload": _RunsCode(marker)}, a)
    b = tmp_path / "legacy.bin"; b.write_bytes(pickle.dumps({"w": _RunsCode(marker)}, protocol=2))
    c = tmp_path / "proto4.pth"; c.write_bytes(pickle.dumps(_RunsCode(marker), protocol=4))
    d = tmp_path / "wbcheckpoint.pt"; torch.save({"arch": TINY_VIT, "kwargs": {}, "state_dict": sd, "x": _RunsCode(marker)}, d)
    return [a, b, c, d]


def test_malicious_pickles_are_refused(tmp_path, offline_settings):
    marker = tmp_path / "code-ran"
    for path in _malicious_files(tmp_path, marker):
        with pytest.raises(InputError, match="refused"): read_checkpoint(path)
        with pytest.raises(InputError, match="refused"): load_model(path)
        with pytest.raises(InputError, match="refused"): load_model(TINY_VIT, weights=path)
    # and when it sits in the weights folder as pretrained weights
    dest = expected_weights_path(parse_model_name(TINY_VIT)).with_suffix(".pth"); dest.parent.mkdir(parents=True)
    dest.write_bytes((tmp_path / "zip.pt").read_bytes())
    with pytest.raises(InputError, match="refused"): load_model(TINY_VIT)
    assert not marker.exists()
    # control: the files really are malicious, an unguarded load runs their code
    torch.load(tmp_path / "zip.pt", weights_only=False)
    assert marker.exists()


def test_torchscript_archive_refused(tmp_path):
    path = tmp_path / "ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit.script is deprecated in recent torch
        torch.jit.script(nn.Linear(2, 2)).save(str(path))
    with pytest.raises(InputError, match="TorchScript archive"): read_checkpoint(path)


def test_corrupt_files(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "x.pt").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="x.safetensors"): read_checkpoint(tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="x.pt"): read_checkpoint(tmp_path / "x.pt")
    with pytest.raises(InputError, match="does not exist"): load_model(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- workbench checkpoints

@register_model("wb:test-mlp", description="tiny MLP for the registry tests",
                preprocess=lambda width=4, **_: (lambda x: x * 2))
def _mlp(width: int = 4, depth: int = 1):
    layers = [nn.Linear(3, width), nn.ReLU()] * depth
    return nn.Sequential(*layers, nn.Linear(width, 2))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    m = _mlp(width=6)
    path = save_checkpoint(m, tmp_path / f"sub/mlp{suffix}", "wb:test-mlp", width=6)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [path.name]
    lm = load_model(path)
    assert lm.arch == "wb:test-mlp" and lm.weights == path and lm.info["kwargs"] == {"width": 6}
    assert lm.name == f"file:{path}" and lm.preprocess(3) == 6
    _assert_same_weights(lm.model, _state(m))
    rand = load_model(path, pretrained=False)
    assert rand.weights is None and rand.model[0].weight.shape == (6, 3)


def test_checkpoint_of_unregistered_arch(tmp_path, monkeypatch):
    path = save_checkpoint(_mlp(), tmp_path / "mlp.safetensors", "wb:test-mlp")
    monkeypatch.delitem(reg._WB_MODELS, "test-mlp")
    with pytest.raises(InputError, match="unknown workbench model wb:test-mlp; registered:"): load_model(path)


def test_checkpoint_fp16_and_timm_arch(tmp_path):
    src = load_model("timm:vit_tiny_patch16_224", pretrained=False, num_classes=5).model
    path = save_checkpoint(src, tmp_path / "vit.safetensors", "timm:vit_tiny_patch16_224", fp16=True, num_classes=5)
    assert read_checkpoint(path).tensors["head.weight"].dtype == torch.float16
    assert path.stat().st_size < 6e6 * 2 + 1e5                     # ~5.5 M parameters at 2 bytes
    lm = load_model(path)
    assert lm.model.head.weight.shape == (5, 192) and lm.model.head.weight.dtype == torch.float32
    assert torch.allclose(lm.model.head.weight, src.head.weight.half().float())
    assert lm.preprocess(Image.new("RGB", (64, 64))).shape == (3, 224, 224)


def test_checkpoint_argument_errors(tmp_path):
    m = _mlp()
    with pytest.raises(InputError, match="suffix"): save_checkpoint(m, tmp_path / "m.ckpt", "wb:test-mlp")
    with pytest.raises(InputError, match="JSON"): save_checkpoint(m, tmp_path / "m.pt", "wb:test-mlp", width=object())
    with pytest.raises(InputError, match="expected clip:ARCH@TAG"): save_checkpoint(m, tmp_path / "m.pt", "mlp")


def test_plain_state_dict_needs_an_architecture(tmp_path):
    sd = _state(load_model(TINY_VIT, pretrained=False).model)
    path = tmp_path / "plain.safetensors"; save_file(sd, path)
    with pytest.raises(InputError, match="does not say which architecture"): load_model(path)
    _assert_same_weights(load_model(TINY_VIT, weights=path).model, sd)


# ---------------------------------------------------------------- downloads (allow_download=true, hub faked)

def test_download_goes_to_weights_dir(offline_settings, monkeypatch):
    import huggingface_hub
    sd = _state(load_model(TINY_VIT, pretrained=False).model)
    calls = []
    def fake_hub(repo_id, filename, local_dir=None, **kw):
        calls.append((repo_id, filename)); p = Path(local_dir) / filename; save_file(sd, p); return str(p)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    monkeypatch.setenv("WORKBENCH_ALLOW_DOWNLOAD", "true")
    lm = load_model(TINY_VIT)
    assert calls == [("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", "model.safetensors")]
    assert lm.weights == expected_weights_path(parse_model_name(TINY_VIT))
    assert sorted(p.name for p in lm.weights.parent.iterdir()) == [lm.weights.name]
    _assert_same_weights(lm.model, sd)


def test_failed_download_is_one_clear_error(offline_settings, monkeypatch):
    import huggingface_hub
    def down(repo_id, filename, **kw): raise OSError("connection refused")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", down)
    monkeypatch.setenv("WORKBENCH_ALLOW_DOWNLOAD", "true")
    with pytest.raises(WeightsMissingError, match="Downloading failed.*model.safetensors.*connection refused.*pytorch_model.bin"):
        load_model(TINY_VIT)
    assert list((offline_settings / "timm").iterdir()) == []


# ---------------------------------------------------------------- known models

def test_known_models_exist_in_installed_libraries(offline_settings):
    import open_clip, timm
    infos = known_models()
    names = {i.name for i in infos}
    assert {"clip:ViT-B-32@laion2b_s34b_b79k", "clip:ViT-B-16@openai", "clip:RN50@openai",
            "timm:vit_base_patch16_224.dino", "timm:vit_base_patch16_224.mae", "timm:vit_base_patch16_224.mocov3",
            "wb:test-mlp"} <= names
    timm_pretrained, clip_pretrained = set(timm.list_pretrained()), set(open_clip.list_pretrained())
    for i in infos:
        spec = resolve_spec(parse_model_name(i.name))
        if spec.source == "timm" and f"{spec.arch}.{spec.tag}" not in reg.EXTRA_TIMM_WEIGHTS:
            assert f"{spec.arch}.{spec.tag}" in timm_pretrained, i.name
        if spec.source == "clip": assert (spec.arch, spec.tag) in clip_pretrained, i.name
        if i.source == "wb": continue   # wb: models list the project's committed checkpoints instead
        assert not i.weights_present and offline_settings in i.expected_path.parents and i.obtain
    assert "timm/vit_base_patch16_224.dino" in next(i for i in infos if i.name == "timm:vit_base_patch16_224.dino").obtain


def test_known_models_sees_present_weights(offline_settings):
    p = offline_settings / "clip" / "RN50@openai.bin"; p.parent.mkdir(parents=True); p.write_bytes(b"x")
    info = {i.name: i for i in known_models()}["clip:RN50@openai"]
    assert info.weights_present and info.expected_path == p
    assert "clip:RN50@openai" in reg.format_models(known_models()) and "present" in reg.format_models(known_models())


ROOT = Path(__file__).resolve().parents[1]


def test_committed_checkpoints_match_their_recorded_sha256():
    from workbench.models.registry import file_sha256
    import json
    provs = sorted((ROOT / "checkpoints").glob("*.json"))
    assert provs
    for prov in provs:
        rec = json.loads(prov.read_text())
        assert rec.get("sha256") == file_sha256(prov.with_suffix(".safetensors")), prov.name


def test_a_committed_checkpoint_overwritten_with_garbage_is_refused(tmp_path):
    import shutil
    src = ROOT / "checkpoints" / "aerial_gan.safetensors"
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    assert load_model(dst, device="cpu").model is not None
    data = bytearray(dst.read_bytes())
    data[-4096:] = os.urandom(4096)          # 4 KB of garbage over the end of the tensor data, the header intact
    dst.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"aerial_gan.safetensors: its sha256 does not match the one in aerial_gan.json"):
        load_model(dst, device="cpu")
    dst.with_suffix(".json").unlink()         # without provenance the damage still shows up as non-finite weights or is loaded
    try:
        load_model(dst, device="cpu")
    except InputError as e:
        assert "non-finite values" in str(e)


def test_non_finite_weights_are_an_error_naming_the_file(tmp_path):
    m = nn.Linear(4, 2)
    with torch.no_grad():
        m.weight[0, :2] = float("nan")
        m.bias[1] = float("inf")
    register_model("wb:test-linear")(lambda: nn.Linear(4, 2))
    p = save_checkpoint(m, tmp_path / "lin.safetensors", "wb:test-linear")
    with pytest.raises(InputError, match=r"lin.safetensors: 3 non-finite values \(NaN or inf\) in 2 tensor\(s\)"):
        load_model(p, device="cpu")


def test_wb_names_register_on_demand_in_a_fresh_interpreter():
    import subprocess
    import sys
    code = ("from workbench.models.registry import load_model; "
            "m = load_model('wb:aerial-gan', pretrained=False, device='cpu'); print(type(m.model).__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "WORKBENCH_DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]


def test_models_command_lists_wb_models_with_their_committed_files(capsys):
    from workbench.cli import main
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("wb:aerial-gan", "wb:object-vit", "wb:object-clip-vit", "wb:unet", "wb:coloc-discriminator"):
        assert name in out, name
    assert "aerial_gan.safetensors" in out and "object_vit_dino.safetensors" in out
    infos = {i.name: i for i in known_models()}
    assert infos["wb:aerial-gan"].weights_present and infos["wb:aerial-gan"].files


def test_models_command_lists_the_demo_segmentation_encoder(capsys, offline_settings):
    "The encoder the demo's pretrained column needs is listed with the file it belongs in and the URL that provides it; found once there."
    from workbench.cli import main
    from workbench.methods.distill import encoder_model_infos, encoder_weights_path
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("smp:resnet18.imagenet"))
    assert "missing" in line and "pretrained-encoder column" in line
    assert str(encoder_weights_path("resnet18", "imagenet")) in out and "resnet18-f37072fd.pth" in out
    p = encoder_weights_path("resnet18", "imagenet"); p.parent.mkdir(parents=True); p.write_bytes(b"x")
    info = next(i for i in encoder_model_infos() if i.name == "smp:resnet18.imagenet")
    assert info.weights_present and info.expected_path == p
