"""CLIP in JAX/Flax NNX: towers with dense outputs, checkpoint loading, tokenizer, preprocessing.

Modelled on OpenAI's `clip` package::

    model = zegot_jax.clip.load('ViT-B/16')          # or a file, a directory, a hub id
    image_features = model.encode_image(normalize(images_uint8))   # [B, 512]
    text_features = model.encode_text(tokenize(['a photo of a cat']))
"""

from zegot_jax.clip.model import CLIP, VisionTransformer
from zegot_jax.clip.positions import resize_pos_embed
from zegot_jax.clip.preprocess import MEAN, STD, normalize
from zegot_jax.clip.tokenizer import EOT, SOS, decode, encode, tokenize
from zegot_jax.clip.variants import HUB_IDS, VARIANTS, CLIPSpec, get_spec
from zegot_jax.clip.weights import load, save_safetensors, state_dict

__all__ = [
    "CLIP",
    "CLIPSpec",
    "EOT",
    "HUB_IDS",
    "MEAN",
    "SOS",
    "STD",
    "VARIANTS",
    "VisionTransformer",
    "decode",
    "encode",
    "get_spec",
    "load",
    "normalize",
    "resize_pos_embed",
    "save_safetensors",
    "state_dict",
    "tokenize",
]
