"""Training functions that tests/test_distributed.py launches under torchrun (workbench.train.distributed.launch): tiny
models, a few steps, every rank's final weights saved for the test to compare (a real job writes only on rank 0)."""
from pathlib import Path

import torch


class ToyPairs:
    "A pool of (image, caption) pairs with the `batch(batch_size, generator, masked_fraction)` of the CLIP pools."
    def __init__(self, n: int = 16, size: int = 32):
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.captions = [f"a photo of {w}" for w in ("a plane", "a car", "a ship", "a tree")] * (n // 4)

    def batch(self, batch_size, generator, masked_fraction=0.5, augment=True):
        idx = torch.randint(len(self.images), (batch_size,), generator=generator).tolist()
        return self.images[idx], [self.captions[i] for i in idx], [""] * batch_size


def train_tiny(out: str, batch_size: int, steps: int, loops: list) -> dict:
    "Train the loops named in `loops` (gan, vit, dino, mae, clip, detector) from the same seeds on every rank; save this rank's weights."
    from workbench.core import torch_generator
    from workbench.train.distributed import dist_context, is_main
    torch.set_num_threads(1)
    ctx, states = dist_context(), {}
    images = (torch.rand(32, 3, 32, 32, generator=torch_generator(1)) * 255).to(torch.uint8)
    if "gan" in loops:
        from workbench.models.gan import DCGANGenerator, Discriminator
        from workbench.train.gan import train_gan
        torch.manual_seed(0)
        G = DCGANGenerator(32, z_dim=8, channel_base=128, channel_max=16)
        D = Discriminator(32, channel_base=128, channel_max=16, mbstd_group=1)   # minibatch-std groups would differ per rank
        r = train_gan(G, D, images, steps=steps, batch_size=batch_size, r1_every=2, seed=0, log_every=1)
        states["gan"] = {**{f"G.{k}": v for k, v in r.parts["generator"].state_dict().items()},
                         **{f"D.{k}": v for k, v in r.parts["discriminator"].state_dict().items()},
                         **{f"ema.{k}": v for k, v in r.model.state_dict().items()}}
    vit = lambda: __import__("workbench.models.vits", fromlist=["object_vit"]).object_vit(32, 8, 32, 1, 2)
    if "vit" in loops:
        from workbench.train.vits import train_supervised
        torch.manual_seed(0)
        r = train_supervised(vit(), images, torch.arange(32) % 3, steps, batch_size, warmup=1, num_classes=3, seed=0, device="cpu")
        states["vit"] = r.model.state_dict()
    if "dino" in loops:
        from workbench.train.vits import train_dino
        r = train_dino(vit(), images, steps, batch_size, warmup=1, out_dim=32, hidden_dim=32, bottleneck_dim=16, n_local=1, seed=0, device="cpu")
        states["dino"] = {**r.parts["student"].state_dict(), "center": r.parts["loss"].center}
    if "mae" in loops:
        from workbench.train.vits import train_mae
        from workbench.train.vits import ViewSpec
        r = train_mae(vit(), images, steps, batch_size, warmup=1, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                      view=ViewSpec(32, (0.35, 1.0), p_jitter=0.0, p_gray=0.0), seed=0, device="cpu")
        states["mae"] = {**r.model.state_dict(), **{f"dec.{k}": v for k, v in r.parts["decoder"].state_dict().items()}}
    if "clip" in loops:
        from workbench.models.clip import small_clip
        from workbench.train.clip import train_clip
        torch.manual_seed(0)
        m = small_clip(image_size=32, patch_size=16, vision_width=32, vision_layers=1, vision_head_width=16, text_width=32,
                       text_heads=2, text_layers=1, context_length=16, embed_dim=16)
        states["clip"] = train_clip(m, ToyPairs(), steps, batch_size, seed=0, device="cpu").model.state_dict()
    if "detector" in loops:
        from workbench.data.fixtures import rectangle_samples
        from workbench.methods.sparsedet import build_detector, train_detector
        det = build_detector(2, backbone="mobilenet_v3_small_fpn", min_size=64, max_size=64, seed=0)
        r = train_detector(det, rectangle_samples(8, seed=0), steps=steps, batch_size=batch_size, lr=0.005, progress=False, device="cpu")
        states["detector"] = r.model.state_dict()
    torch.save(states, Path(out) / f"rank{ctx.rank}.pt")
    if is_main(): (Path(out) / "written-by-rank0").write_text(str(ctx.world_size))
    return dict(world_size=ctx.world_size, loops=loops)
