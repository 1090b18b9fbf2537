"""Text side of ZegOT: learned prompt contexts (CoOp-style) and hand-crafted templates.

A learned prompt for class k and context n is the token sequence
`[SOS] ctx_n,1 .. ctx_n,L  <class-name tokens> . [EOT]`: the L context vectors replace the token
embeddings right after SOS and go through the frozen text transformer. The contexts are shared across
classes, so a new vocabulary needs no training.

Contexts start either random (normal, `init_std`) or from the token embeddings of hand-crafted
template words, one template per prompt ("a photo of a", "a picture of a", ...), so that at step 0
each prompt is a hand-crafted prompt and the N prompts differ (CoOp's and KgCoOp's initialisation).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zegot_jax import clip as clip_lib


class Trainable(nnx.Param):
    """Every parameter the optimiser updates: prompt contexts and DLFA projections, nothing else."""


def check_vocabulary(class_names: Sequence[str], max_classes: int) -> tuple[str, ...]:
    """Validates a vocabulary: non-empty, unique, non-blank names, at most `max_classes`."""
    if isinstance(class_names, str):
        raise TypeError(
            f"The vocabulary must be a list of class names, not the string "
            f"{_short(class_names)!r}: write [{_short(class_names)!r}], or split a "
            "comma-separated string."
        )
    names = tuple(class_names)
    if not names:
        raise ValueError("The class vocabulary is empty: give at least one class name.")
    blank = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if blank:
        raise ValueError(f"Class names at positions {blank} are empty or not strings.")
    seen, dupes = set(), []
    for n in names:
        key = n.strip().lower()
        if key in seen:
            dupes.append(n)
        seen.add(key)
    if dupes:
        raise ValueError(f"Duplicate class names {sorted(set(dupes))}: each class must appear once.")
    if len(names) > max_classes:
        raise ValueError(
            f"{len(names)} classes exceed model.max_classes={max_classes}; raise it in the config "
            "(the similarity tensor grows linearly with the vocabulary)."
        )
    return names


def _short(name: str, limit: int = 60) -> str:
    """A name for a message: at most `limit` characters."""
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name)} characters)"


def prompt_token_table(
    class_names: Sequence[str], *, num_context: int, context_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `[SOS] X*L name . [EOT]` per class, and the EOT positions.

    Args:
        class_names: K class names.
        num_context: L, the number of context slots after SOS (filled by learned vectors).
        context_length: the (possibly shortened) text context length.

    Returns:
        tokens `[K, T]` int32 (slots hold a placeholder id; T <= context_length covers the longest
        prompt) and eot `[K]` int32.
    """
    placeholder = clip_lib.encode("X")[0]
    period = clip_lib.encode(".")
    rows, eot = [], []
    for name in class_names:
        ids = [clip_lib.SOS, *([placeholder] * num_context), *clip_lib.encode(name), *period, clip_lib.EOT]
        if len(ids) > context_length:
            raise ValueError(
                f"The prompt for class {_short(name)!r} needs {len(ids)} tokens but the text context "
                f"length is {context_length}; raise clip.text_context_length or shorten the name."
            )
        eot.append(len(ids) - 1)
        rows.append(ids)
    return _trimmed(rows, eot, context_length)


def _trimmed(rows: list[list[int]], eot: list[int], context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads to the longest prompt only (rounded up to 8, at most `context_length`).

    With a causal mask the features at EOT do not depend on the padding after it, so this is exact
    and saves the text tower most of its work at context 77 (prompts are 10-20 tokens).
    """
    longest = max(eot, default=0) + 1
    length = min(context_length, -(-longest // 8) * 8)
    table = np.zeros((len(rows), length), np.int32)
    for i, ids in enumerate(rows):
        table[i, : len(ids)] = ids[:length]
    return table, np.asarray(eot, np.int32)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / ||x|| along `axis` (with a small floor against division by zero)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-12))


def template_context(
    clip: clip_lib.CLIP, templates: Sequence[str], num_context: int, noise: jax.Array
) -> jax.Array:
    """Contexts `[N, L, W]` initialised from the token embeddings of template words.

    Prompt n starts as `templates[n]` ("a photo of a"): its word embeddings fill the last slots,
    right before the class name, so `[SOS] ctx name .` reads as the hand-crafted prompt. A template
    shorter than L leaves its first slots at `noise` (the random initialisation).

    Args:
        clip: the frozen CLIP (its token embedding table).
        templates: one text per prompt, without the class name.
        num_context: L, slots per prompt.
        noise: `[N, L, W]` random initial contexts.

    Raises:
        ValueError: fewer templates than prompts, or a template longer than L tokens.
    """
    num_prompts = noise.shape[0]
    if len(templates) < num_prompts:
        raise ValueError(
            f"model.prompt_init='templates' needs one text per prompt: {num_prompts} prompts but "
            f"model.init_templates has {len(templates)}; add texts or use prompt_init='random'."
        )
    context = noise
    for n, text in enumerate(templates[:num_prompts]):
        ids = clip_lib.encode(text)
        if not 0 < len(ids) <= num_context:
            raise ValueError(
                f"model.init_templates[{n}]={text!r} is {len(ids)} tokens; it must be 1 to "
                f"model.context_tokens={num_context}."
            )
        words = clip.embed_tokens(jnp.asarray([ids], jnp.int32))[0].astype(jnp.float32)
        context = context.at[n, num_context - len(ids) :].set(words)
    return context


class PromptLearner(nnx.Module):
    """N learned contexts of L vectors each, `context` `[N, L, W_text]`, shared across classes.

    `prefix_shared`: with the causal text mask the states of `[SOS] ctx_n` do not depend on the
    class, so they are computed once per prompt and only the class-name positions run per
    (class, prompt) pair (`CLIP.encode_shared_prefix`); the same features as encoding every full
    prompt, at a fraction of the work. `remat`: rematerialise each text block in the backward pass
    (a memory saving for training; forward values and gradients are unchanged).
    """

    def __init__(
        self,
        num_prompts: int,
        num_context: int,
        width: int,
        *,
        init_std: float,
        rngs: nnx.Rngs,
        init: jax.Array | None = None,
        prefix_shared: bool = True,
        remat: bool = False,
    ):
        """Random contexts (normal, `init_std`), or `init` `[N, L, W]` when given."""
        shape = (num_prompts, num_context, width)
        if init is None:
            init = init_std * jax.random.normal(rngs.params(), shape, jnp.float32)
        elif init.shape != shape:
            raise ValueError(f"initial contexts have shape {init.shape}, expected {shape}.")
        self.context = Trainable(jnp.asarray(init, jnp.float32))
        self.prefix_shared = prefix_shared
        self.remat = remat

    def __call__(self, clip: clip_lib.CLIP, tokens: jax.Array, eot: jax.Array) -> jax.Array:
        """Encodes every (class, prompt) pair with the frozen text tower.

        Args:
            clip: the frozen CLIP model.
            tokens: `[K, Lt]` int32 from `prompt_token_table` (every row starts with SOS).
            eot: `[K]` EOT positions.

        Returns:
            L2-normalised text features `[K, N, D]`.
        """
        embedded = clip.embed_tokens(tokens)  # [K, Lt, W]
        context = self.context[...].astype(embedded.dtype)  # [N, L, W]
        if self.prefix_shared:
            feats = self._shared_prefix(clip, embedded, context, eot)
        else:
            feats = self._full(clip, embedded, context, eot)
        return l2_normalize(jnp.swapaxes(feats.astype(jnp.float32), 0, 1))

    def _full(
        self, clip: clip_lib.CLIP, embedded: jax.Array, context: jax.Array, eot: jax.Array
    ) -> jax.Array:
        """Every whole prompt through the tower: `[K, Lt, W]`, `[N, L, W]` -> `[N, K, D]`."""
        (num_prompts, num_context, _), (k, lt, width) = context.shape, embedded.shape
        x = jnp.broadcast_to(embedded[None], (num_prompts, k, lt, width))
        ctx = jnp.broadcast_to(context[:, None], (num_prompts, k, num_context, width))
        x = x.at[:, :, 1 : 1 + num_context].set(ctx)
        feats = clip.encode_embedded_text(
            x.reshape(num_prompts * k, lt, width), jnp.tile(eot, num_prompts), remat=self.remat
        )
        return feats.reshape(num_prompts, k, -1)

    def _shared_prefix(
        self, clip: clip_lib.CLIP, embedded: jax.Array, context: jax.Array, eot: jax.Array
    ) -> jax.Array:
        """`[SOS] ctx_n` once per prompt, the class names after it: `[N, K, D]`."""
        num_prompts, num_context, width = context.shape
        sos = jnp.broadcast_to(embedded[0, :1], (num_prompts, 1, width))
        prefix = jnp.concatenate([sos, context], axis=1)  # [N, 1 + L, W]
        return clip.encode_shared_prefix(prefix, embedded[:, 1 + num_context :], eot, remat=self.remat)


def template_features(
    clip: clip_lib.CLIP, class_names: Sequence[str], templates: Sequence[str], *, context_length: int
) -> jax.Array:
    """Hand-crafted prompts: each template is one of the N prompts. Returns `[K, T, D]`."""
    texts = [t.format(name) for name in class_names for t in templates]
    full = clip_lib.tokenize(texts, context_length=context_length)
    eot = full.argmax(axis=1)  # EOT has the largest id
    tokens, _ = _trimmed(
        [list(row[: e + 1]) for row, e in zip(full, eot, strict=True)], list(eot), context_length
    )
    tokens = jnp.asarray(tokens)
    feats = clip.encode_text(tokens).astype(jnp.float32)
    return l2_normalize(feats.reshape(len(class_names), len(templates), -1))
