"""Our jitted train step against the PyTorch eager step of the same math.

The PyTorch side is the independent twin `tests/reference/zegot_torch.py` (parity-tested against
the JAX model to 1e-4) with `torch.optim.AdamW`; the JAX side is `make_train_step` (optax AdamW),
jitted with the state donated. Same random ViT-B/16 weights (a `transformers.CLIPModel` built
offline, loaded into ours with `zegot_jax.clip.load`), same initial trainable parameters, same
batch; the default config (N=4, layers 5/7/11, template-initialised contexts, residual DLFA,
temperature/bias). Each side with its fastest correct settings: JAX with the defaults (the text
context trimmed to the longest prompt, the prompts' shared prefix encoded once, MPOT by 10 Newton
steps with the implicit backward); PyTorch pads to the longest prompt, runs the frozen image tower
under `no_grad`, differentiates 100 log-domain Sinkhorn iterations by autograd (OTSeg's way) and
uses every core (`torch.set_num_threads(os.cpu_count())`). The two steps are timed alternately
(so a change of load hits both), best of `--rounds`; the first step of each is reported apart
(JAX: compile).

    .venv/bin/python benchmarks/train_step_vs_torch.py            # ViT-B/16 at 512, K=20 and 156
    .venv/bin/python benchmarks/train_step_vs_torch.py --smoke    # tiny CLIP, seconds

At K=156 each side needs about 12 GiB (JAX compiled temp buffers; PyTorch autograd through the
unrolled Sinkhorn): run it on an idle machine. Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import harness
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from zegot_jax import clip as clip_lib
from zegot_jax.data import class_names as names_lib
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.train import optim
from zegot_jax.train import step as step_lib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
from zegot_torch import OT_SETTINGS, TorchZegOT  # noqa: E402  (test code: the twin is not part of the package)


def hf_clip(smoke: bool) -> transformers.CLIPModel:
    """A random CLIP: ViT-B/16 as released (shapes), or a tiny one for `--smoke`."""
    spec = clip_lib.get_spec("ViT-B/16")
    vision = dict(
        hidden_size=spec.vision_width,
        intermediate_size=4 * spec.vision_width,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    text = dict(
        hidden_size=spec.text_width,
        intermediate_size=4 * spec.text_width,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
    )
    if smoke:
        vision = dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        text = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(text, hidden_act="quick_gelu", bos_token_id=clip_lib.SOS, eos_token_id=clip_lib.EOT),
        vision_config=dict(vision, hidden_act="quick_gelu"),
        projection_dim=24 if smoke else spec.embed_dim,
    )
    torch.manual_seed(0)
    return transformers.CLIPModel(config).eval()


def seen_classes(k: int) -> tuple[str, ...]:
    names, unseen = names_lib.DATASETS["coco_stuff"]
    return tuple(n for i, n in enumerate(names) if i not in set(unseen))[:k]


def make_config(path: str, args: argparse.Namespace):
    config = harness.default_config()
    config.clip.weights = path
    if args.smoke:
        config.model.layers = (0, 1, 2)
        config.model.num_prompts, config.model.context_tokens = 2, 4
    config.model.ot.num_iterations = args.iterations
    return config


def to_torch_params(params) -> dict[str, np.ndarray]:
    """JAX `Trainable` state -> the twin's parameter names (DLFA kernels transposed)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path][:-1]
        if keys[0] == "alignment":
            out[f"dlfa.{keys[1]}.{'weight' if keys[2] == 'kernel' else 'bias'}"] = (
                np.asarray(leaf).T if keys[2] == "kernel" else np.asarray(leaf)
            )
        else:
            out[
                {"prompt_learner": "context", "score_scale": "log_temperature", "score_bias": "score_bias"}[
                    keys[0]
                ]
            ] = np.asarray(leaf)
    return out


def run_k(hf, jclip, path: str, k: int, args: argparse.Namespace) -> list[list]:
    """Both steps for K classes, timed alternately; rows of the table."""
    config = make_config(path, args)
    names = seen_classes(k)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((args.batch, args.size, args.size, 3), np.float32),
        "label": rng.integers(0, k, (args.batch, args.size, args.size)).astype(np.int32),
    }

    model = build_lib.build_model(config, jclip)
    graphdef, params, frozen = functional.split_model(model)
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule, config), donate_argnums=(0,))
    inputs = model.text_inputs(names, config.clip.text_context_length)
    jbatch = jax.tree.map(jnp.asarray, batch)
    state = step_lib.init_state(jax.tree.map(jnp.copy, params), tx, config.seed)

    twin_model = config.model.copy_and_resolve_references()
    twin_model.ot.update(OT_SETTINGS)  # the twin's OT
    twin = TorchZegOT(hf, twin_model)
    trainable = {n: p for n, p in twin.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, value in to_torch_params(params).items():
            trainable[name].copy_(torch.from_numpy(value))
    opt = torch.optim.AdamW(
        list(trainable.values()), lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
    )
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(batch["label"])

    def jax_step():
        nonlocal state
        state, metrics = step(state, frozen, jbatch, inputs)
        return float(jax.block_until_ready(metrics)["loss"])

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss, _ = twin.loss(images, labels, names, config.loss)
        loss.backward()
        opt.step()
        return float(loss)

    timings = {"JAX jit": [], "PyTorch eager": []}
    losses = {}
    for r in range(args.rounds + 1):
        for name, fn in (("JAX jit", jax_step), ("PyTorch eager", torch_step)):
            start = time.perf_counter()
            loss = fn()
            timings[name].append(time.perf_counter() - start)
            if r == 0:
                losses[name] = loss
        print(
            f"  K={k} round {r}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in timings.items()), flush=True
        )
    print(f"  first-step losses: {losses}", flush=True)
    rel = abs(losses["JAX jit"] - losses["PyTorch eager"]) / abs(losses["PyTorch eager"])
    best = {n: min(t[1:]) for n, t in timings.items()}
    load = f"{os.getloadavg()[0]:.1f}"
    rows = [
        [
            k,
            n,
            f"{timings[n][0]:.1f}",
            f"{best[n]:.2f}",
            f"{args.batch / best[n]:.2f}",
            f"{losses[n]:.4f}",
            load,
        ]
        for n in timings
    ]
    rows.append(
        [
            k,
            "PyTorch / JAX step time",
            "",
            f"{best['PyTorch eager'] / best['JAX jit']:.2f}x",
            "",
            f"first-step loss rel. diff {rel:.1e}",
            "",
        ]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random CLIP, a few seconds")
    parser.add_argument("--size", type=int, default=None, help="crop (default 512; smoke 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="K values (default 20 156; smoke 3 5)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="Sinkhorn iterations (default 100; smoke 10)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per side after the first")
    args = parser.parse_args()
    args.size = args.size or (32 if args.smoke else 512)
    args.classes = args.classes or ([3, 5] if args.smoke else [20, 156])
    args.iterations = args.iterations or (10 if args.smoke else 100)
    torch.set_num_threads(os.cpu_count())

    hf = hf_clip(args.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        jclip = clip_lib.load(tmp)
        print(
            harness.machine_line(),
            f"torch {torch.__version__}, {torch.get_num_threads()} threads",
            flush=True,
        )
        rows = [row for k in args.classes for row in run_k(hf, jclip, tmp, k, args)]
    print(
        f"\n{'tiny CLIP (smoke)' if args.smoke else 'ViT-B/16'} at {args.size}x{args.size}, "
        f"batch {args.batch}, N={2 if args.smoke else 4}, {args.iterations} Sinkhorn iterations, "
        "float32\n"
    )
    print("| K | step | first step (s) | step (s) | img/s | first-step loss | load average |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


if __name__ == "__main__":
    main()
