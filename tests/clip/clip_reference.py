"""Test helpers: random PyTorch reference CLIPs (transformers, offline) and layout writers."""

import numpy as np
import torch
import transformers

OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's .pt files


def build_hf_clip(
    act="quick_gelu",
    *,
    vision_width=128,
    vision_layers=3,
    vision_heads=2,
    patch=8,
    image_size=40,
    text_width=64,
    text_layers=2,
    text_heads=1,
    context=11,
    vocab=1000,
    embed=48,
    seed=0,
    vision_mlp=None,
    text_mlp=None,
):
    """A random `transformers.CLIPModel` in eval mode; every weight (LN, biases too) is random."""
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=text_width,
            intermediate_size=text_mlp or 4 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=context,
            hidden_act=act,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=vision_mlp or 4 * vision_width,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=image_size,
            patch_size=patch,
            hidden_act=act,
        ),
        projection_dim=embed,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_to_openai_reference(model) -> dict[str, torch.Tensor]:
    """Written out name by name here, independently of `zegot_jax.clip.convert`."""
    sd = model.state_dict()
    cfg = model.config
    out = {}
    towers = (
        ("vision_model", "visual.transformer.resblocks", cfg.vision_config),
        ("text_model", "transformer.resblocks", cfg.text_config),
    )
    for hf, oa, tower_cfg in towers:
        for i in range(tower_cfg.num_hidden_layers):
            s, d = f"{hf}.encoder.layers.{i}.", f"{oa}.{i}."
            for kind in ("weight", "bias"):
                out[d + f"attn.in_proj_{kind}"] = torch.cat(
                    [sd[s + f"self_attn.{c}_proj.{kind}"] for c in "qkv"], 0
                )
                out[d + f"attn.out_proj.{kind}"] = sd[s + f"self_attn.out_proj.{kind}"]
                out[d + f"ln_1.{kind}"] = sd[s + f"layer_norm1.{kind}"]
                out[d + f"ln_2.{kind}"] = sd[s + f"layer_norm2.{kind}"]
                out[d + f"mlp.c_fc.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
                out[d + f"mlp.c_proj.{kind}"] = sd[s + f"mlp.fc2.{kind}"]
    v, t = "vision_model.", "text_model."
    out["visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = sd[v + f"pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[v + f"post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = sd[t + f"final_layer_norm.{kind}"]
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    out["token_embedding.weight"] = sd[t + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[t + "embeddings.position_embedding.weight"]
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return {k: v.detach().clone() for k, v in out.items()}


def set_torch_grid(model, grid: int):
    """Resizes the torch model's position table bilinearly (align_corners=False) to `grid`."""
    emb = model.vision_model.embeddings
    table = emb.position_embedding.weight.detach()
    g = int(round((table.shape[0] - 1) ** 0.5))
    patch = table[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patch = torch.nn.functional.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False)
    new = torch.cat([table[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)], 0)
    emb.position_embedding = torch.nn.Embedding.from_pretrained(new, freeze=True)
    emb.position_ids = torch.arange(grid * grid + 1)[None]
    emb.image_size = grid * emb.patch_size
    emb.num_patches, emb.num_positions = grid * grid, grid * grid + 1


@torch.no_grad()
def torch_image(model, images_nhwc: np.ndarray):
    """(image embeddings [B, D], hidden states after each block) of the torch model."""
    pixels = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    embeds = model.visual_projection(out.pooler_output)
    return embeds.numpy(), [h.numpy() for h in out.hidden_states[1:]]


@torch.no_grad()
def torch_text(model, tokens: np.ndarray) -> np.ndarray:
    out = model.text_model(input_ids=torch.from_numpy(tokens.astype(np.int64)))
    return model.text_projection(out.pooler_output).numpy()


def random_tokens(rng: np.random.Generator, batch: int, length: int, vocab: int) -> np.ndarray:
    """[SOS] random ids [EOT] 0-padding, with EOT = vocab - 1 at random positions."""
    tokens = np.zeros((batch, length), np.int32)
    for row in range(batch):
        end = int(rng.integers(2, length))
        tokens[row, 0] = vocab - 2
        tokens[row, 1:end] = rng.integers(1, vocab - 2, end - 1)
        tokens[row, end] = vocab - 1
    return tokens


def assert_close(actual, expected, rtol=1e-4):
    """Relative agreement measured against the scale of `expected` (max-abs norm)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)
    assert err < rtol, f"relative error {err:.2e} >= {rtol:.0e}"
