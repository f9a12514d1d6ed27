"""Unit statistics vs the generator's own forward passes, in one run on the same seeds.

Goal (generator-neurons issue): streaming unit statistics (quantile sample + top-K seeds for every conv layer
>= 16x16) cost at most 1.15x the time of the generator's forward passes over the same seeds.

    python benchmarks/bench_unit_stats.py [--n 2048] [--batch 64] [--repeats 5] [--device cpu] [--arch aerial|stylegan2]

Both sides run the same batches of seeds (latents from seeds, forward, no grad); they alternate A B A B ...
and the median of the per-pair ratios is reported.
"""
import argparse
import statistics
import time

import torch

from workbench.models.gan import aerial_gan, generator_adapter
from workbench.models.generators import StyleGAN2Adapter
from workbench.methods.neurons import unit_statistics


def build(arch: str):
    torch.manual_seed(0)
    if arch == "aerial":
        return generator_adapter(aerial_gan(64, channel_base=1024, channel_max=64).eval())
    from workbench.models.generators import StyleGAN2Generator
    G = StyleGAN2Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=64, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=1024, channel_max=64))
    return StyleGAN2Adapter(G.eval())


def forward_only(gen, seeds, batch):
    with torch.no_grad():
        for i in range(0, len(seeds), batch):
            gen(gen.sample_latents(seeds[i:i + batch]).to(gen.device))
    if gen.device.type == "cuda": torch.cuda.synchronize()


def with_stats(gen, seeds, batch):
    unit_statistics(gen, seeds, batch_size=batch)
    if gen.device.type == "cuda": torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="aerial", choices=["aerial", "stylegan2"])
    a = ap.parse_args()
    gen = build(a.arch).to(a.device)
    seeds = list(range(a.n))
    layers = gen.conv_layers(16)
    print(f"{a.arch} generator on {a.device}, {a.n} seeds, batch {a.batch}, layers: "
          + ", ".join(f"{l.name}({l.channels}@{l.resolution})" for l in layers))
    forward_only(gen, seeds[: a.batch], a.batch); with_stats(gen, seeds[: 2 * a.batch], a.batch)   # warm-up
    tf, ts = [], []
    for _ in range(a.repeats):
        t = time.perf_counter(); forward_only(gen, seeds, a.batch); tf.append(time.perf_counter() - t)
        t = time.perf_counter(); with_stats(gen, seeds, a.batch); ts.append(time.perf_counter() - t)
    ratios = [s / f for s, f in zip(ts, tf)]
    print(f"forward only   : median {statistics.median(tf):.3f} s  (min {min(tf):.3f}, max {max(tf):.3f})")
    print(f"unit statistics: median {statistics.median(ts):.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})")
    print(f"ratio stats/forward: median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})  goal <= 1.15")


if __name__ == "__main__":
    main()
