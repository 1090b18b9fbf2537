"""Image-tower throughput: our JAX CLIP (jit) vs PyTorch eager (transformers), same weights.

Builds a random ViT-B/16 `transformers.CLIPModel` offline, loads its weights into ours through
`zegot_jax.clip.load`, and times the image tower (projected class embedding) at each resolution;
the PyTorch model gets the same bilinearly resized position table. Prints a Markdown table.

    .venv/bin/python benchmarks/clip_tower.py --sizes 224 512 --batch 1 --reps 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from zegot_jax import clip


def torch_vit_b16() -> transformers.CLIPModel:
    spec = clip.get_spec("ViT-B/16")
    config = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=spec.text_width,
            intermediate_size=4 * spec.text_width,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=spec.vision_width,
            intermediate_size=4 * spec.vision_width,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            hidden_act="quick_gelu",
        ),
        projection_dim=spec.embed_dim,
    )
    torch.manual_seed(0)
    return transformers.CLIPModel(config).eval()


def set_torch_resolution(model: transformers.CLIPModel, grid: int, table: np.ndarray) -> None:
    """Puts our resized position table (`[1 + grid^2, W]`) into the PyTorch model."""
    emb = model.vision_model.embeddings
    emb.position_embedding = torch.nn.Embedding.from_pretrained(torch.from_numpy(table.copy()))
    emb.position_ids = torch.arange(grid * grid + 1)[None]
    emb.image_size = grid * emb.patch_size
    emb.num_patches, emb.num_positions = grid * grid, grid * grid + 1


def time_fn(fn, reps: int) -> float:
    """Best-of-`reps` seconds of one call (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    torch_model = torch_vit_b16()
    with tempfile.TemporaryDirectory() as folder:
        torch_model.save_pretrained(folder)
        model = clip.load(folder, dtype=jnp.dtype(args.dtype))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(x))
    table = np.asarray(model.visual.positional_embedding[...])

    rows = []
    for size in args.sizes:
        grid = size // model.spec.patch_size
        set_torch_resolution(torch_model, grid, np.asarray(clip.resize_pos_embed(table, (grid, grid))))
        images = np.random.default_rng(0).standard_normal((args.batch, size, size, 3))
        images = images.astype(np.float32)
        pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

        def run_torch(pixels=pixels):
            with torch.no_grad():
                return torch_model.visual_projection(
                    torch_model.vision_model(pixel_values=pixels).pooler_output
                )

        start = time.perf_counter()
        ours = encode(state, images).block_until_ready()  # warm-up = compile
        compile_s = time.perf_counter() - start
        ref = run_torch()
        diff = float(np.abs(np.float32(ours) - ref.numpy()).max() / np.abs(ref.numpy()).max())
        jax_s = time_fn(lambda images=images: encode(state, images).block_until_ready(), args.reps)
        torch_s = time_fn(run_torch, args.reps)
        rows.append((size, grid, jax_s, torch_s, compile_s, diff))

    print(
        f"\nViT-B/16 image tower, batch {args.batch}, JAX {args.dtype} jit vs PyTorch float32 "
        f"eager (no_grad); best of {args.reps}. jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}.\n"
    )
    print(
        "| resolution | tokens | JAX img/s | PyTorch img/s | speed-up (JAX / PyTorch) "
        "| JAX compile s | max rel. diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, grid, jax_s, torch_s, compile_s, diff in rows:
        print(
            f"| {size}x{size} | {grid}x{grid}+1 | {args.batch / jax_s:.2f} | "
            f"{args.batch / torch_s:.2f} | {torch_s / jax_s:.2f}x | {compile_s:.1f} | "
            f"{diff:.1e} |"
        )


if __name__ == "__main__":
    main()
