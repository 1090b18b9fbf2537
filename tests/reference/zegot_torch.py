"""ZegOT written again in PyTorch: an independent oracle for the JAX model (test extra only).

Written from `shared/method.md` (sections 2-3) and the README, not translated from `zegot_jax`:
a frozen `transformers.CLIPModel`; N learned contexts of L vectors inserted after SOS through the
token embeddings (`[SOS] ctx name . [EOT]`, HF embeddings + encoder with a causal mask +
final_layer_norm, EOT pooling, text_projection); the selected blocks' patch tokens (HF's
`hidden_states[i + 1]` is the output of 0-indexed block i, `hidden_states[0]` the ln_pre output)
through post_layernorm and visual_projection, or, for the last block in 'value' mode, MaskCLIP's
value path; g = the class token through the same path; DLFA; a log-domain Sinkhorn with a fixed
iteration count and autograd through it; the refined score, temperature/bias, layer mean, bilinear
upsampling, focal + dice, the text-consistency term; sigmoid, ensemble, seen penalty, argmax.
Never imported by the package. Not covered: unbalanced OT (`ot.tau < 1`), implicit
differentiation, `global_pool='mean'`, hand-crafted `prompts='templates'` as the model's prompts.
"""

import math

import torch
import torch.nn.functional as F

from zegot_jax import clip as clip_lib  # the BPE tokenizer only (parity-tested on its own)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# The `model.ot` settings whose JAX computation this twin reproduces: fixed log-domain Sinkhorn
# iterations, differentiated through (callers set them on the JAX side for parity).
OT_SETTINGS = {"solver": "sinkhorn", "domain": "log", "backward": "unrolled"}


def sinkhorn_log(cost: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Plan `[..., M, N]` of entropic OT with uniform marginals (1/M, 1/N), log domain.

    From zero potentials, g then f in each iteration (ott's order), exactly `iterations` times.
    """
    m, n = cost.shape[-2:]
    f = cost.new_zeros(cost.shape[:-1])
    g = cost.new_zeros(cost.shape[:-2] + (n,))
    for _ in range(iterations):
        g = -epsilon * math.log(n) - epsilon * torch.logsumexp((f[..., :, None] - cost) / epsilon, -2)
        f = -epsilon * math.log(m) - epsilon * torch.logsumexp((g[..., None, :] - cost) / epsilon, -1)
    return torch.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """`[B, K, h, w] -> [B, K, *size]`, bilinear, half-pixel centres, no antialiasing."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def focal_dice(
    logits,
    labels,
    *,
    focal_weight=100.0,
    dice_weight=1.0,
    alpha=0.25,
    gamma=2.0,
    ignore_index=255,
    ignore_as_negative=True,
):
    """`(loss, focal, dice)` of logits `[B, K, H, W]` against labels `[B, H, W]` (method.md).

    Ignore pixels (and ids outside [0, K)) have an all-zero target; with `ignore_as_negative`
    they are negatives of every class, otherwise the ignore pixels get weight 0 in the focal mean
    and the dice's prediction sum. Both terms are divided by the number of present (b, k) masks.
    """
    b, k = logits.shape[:2]
    x = logits.flatten(2)
    y = labels.flatten(1)[:, None, :]
    target = (y == torch.arange(k)[None, :, None]).to(x.dtype)
    weight = torch.ones_like(y, dtype=x.dtype) if ignore_as_negative else (y != ignore_index).to(x.dtype)
    present = (target.sum(-1) > 0).to(x.dtype)
    num_masks = present.sum().clamp(min=1.0)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    focal = ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    focal = ((focal * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)).sum() / num_masks
    dice = 1 - (2 * (p * target).sum(-1) + 1) / ((p * weight).sum(-1) + target.sum(-1) + 1)
    dice = (dice * present).sum() / num_masks
    return focal_weight * focal + dice_weight * dice, focal, dice


class TorchZegOT(torch.nn.Module):
    """Frozen HF CLIP + learned contexts + DLFA + MPOT, configured by a `model` config section.

    Trainable parameters: `context` `[N, L, W_text]`, `dlfa.{i}` (`Linear(2D -> D)`, one per
    layer), `log_temperature` and `score_bias` (when `learn_temperature`). Images are NCHW.
    """

    def __init__(self, clip, cfg, *, seed: int = 0):
        super().__init__()
        for key, ok in (("prompts", "learned"), ("global_pool", "class")):
            if cfg[key] != ok:
                raise NotImplementedError(f"the twin covers model.{key}={ok!r} only")
        if cfg.ot.tau < 1.0 or cfg.ot.solver != "sinkhorn" or cfg.ot.threshold > 0:
            raise NotImplementedError("the twin covers balanced, fixed-iteration Sinkhorn only")
        self.clip = clip.eval().requires_grad_(False)
        self.cfg = cfg
        self.layers = tuple(int(i) for i in cfg.layers)
        self.depth = clip.config.vision_config.num_hidden_layers
        self._templates = {}
        self._positions = clip.vision_model.embeddings.position_embedding.weight.detach().clone()
        gen = torch.Generator().manual_seed(seed)
        width, dim = clip.config.text_config.hidden_size, clip.config.projection_dim
        n, length = cfg.num_prompts, cfg.context_tokens
        context = cfg.prompt_init_std * torch.randn(n, length, width, generator=gen)
        if cfg.prompt_init == "templates":  # prompt i starts as template i, right before the name
            for i, text in enumerate(cfg.init_templates[:n]):
                ids = torch.tensor(clip_lib.encode(text))
                context[i, length - len(ids) :] = self._embed(ids)
        self.context = torch.nn.Parameter(context)
        self.dlfa = None
        if cfg.alignment:
            self.dlfa = torch.nn.ModuleList(torch.nn.Linear(2 * dim, dim) for _ in self.layers)
            for linear in self.dlfa:
                if cfg.alignment_residual:
                    torch.nn.init.zeros_(linear.weight)
                else:
                    torch.nn.init.trunc_normal_(linear.weight, std=0.02, a=-0.04, b=0.04, generator=gen)
                torch.nn.init.zeros_(linear.bias)
        if cfg.learn_temperature:
            self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(cfg.temperature_init)))
            self.score_bias = torch.nn.Parameter(torch.tensor(float(cfg.bias_init)))

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.clip.text_model.embeddings.token_embedding(ids).detach()

    # Text side.
    def encode_embedded(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Token embeddings `[S, T, W]` (positions not yet added) -> projected EOT features."""
        text = self.clip.text_model
        h = text.embeddings(inputs_embeds=x)
        t = x.shape[1]
        causal = torch.full((t, t), float("-inf")).triu(1)[None, None]
        h = text.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state
        h = text.final_layer_norm(h[torch.arange(len(eot)), eot])
        return self.clip.text_projection(h)

    def text_features(self, names) -> torch.Tensor:
        """L2-normalised `[K, N, D]` for `[SOS] ctx_n name . [EOT]` (padded with 0 after EOT)."""
        n, length, width = self.context.shape
        rows = [
            [clip_lib.SOS] + [0] * length + clip_lib.encode(name) + clip_lib.encode(".") + [clip_lib.EOT]
            for name in names
        ]
        longest = max(map(len, rows))
        ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
        eot = torch.tensor([len(r) - 1 for r in rows])
        emb = self._embed(ids)[None].expand(n, -1, -1, -1)  # [N, K, T, W]
        k = len(names)
        ctx = self.context[:, None].expand(n, k, length, width)
        x = torch.cat([emb[:, :, :1], ctx, emb[:, :, 1 + length :]], dim=2)
        feats = self.encode_embedded(x.reshape(n * k, longest, width), eot.repeat(n))
        return normalize(feats.view(n, k, -1).transpose(0, 1))

    @torch.no_grad()
    def template_features(self, names, templates) -> torch.Tensor:
        """Frozen hand-crafted prompts through HF's own text model: `[K, T, D]`, normalised.

        Cached per vocabulary (CLIP is frozen); tokens cut after the last EOT (causal mask).
        """
        key = (tuple(names), tuple(templates))
        if key not in self._templates:
            context = self.clip.config.text_config.max_position_embeddings
            ids = clip_lib.tokenize([t.format(n) for n in names for t in templates], context)
            ids = torch.from_numpy(ids[:, : (ids == clip_lib.EOT).argmax(1).max() + 1]).long()
            feats = self.clip.text_projection(self.clip.text_model(input_ids=ids).pooler_output)
            self._templates[key] = normalize(feats.view(len(names), len(templates), -1))
        return self._templates[key]

    # Image side.
    def _set_grid(self, grid: int) -> None:
        """Bilinear (align_corners=False) position table for a `grid x grid` token grid."""
        emb = self.clip.vision_model.embeddings
        if emb.num_patches == grid * grid:
            return
        table = self._positions
        g0 = round(math.sqrt(table.shape[0] - 1))
        patch = table[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=False)
        table = torch.cat([table[:1], patch.permute(0, 2, 3, 1).reshape(grid * grid, -1)])
        emb.position_embedding = torch.nn.Embedding.from_pretrained(table, freeze=True)
        emb.register_buffer("position_ids", torch.arange(grid * grid + 1)[None], persistent=False)
        emb.image_size, emb.num_patches, emb.num_positions = grid * emb.patch_size, grid**2, grid**2 + 1

    def _value_path(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's last block on its input tokens: attention replaced by out_proj(v_proj(.))."""
        block = self.clip.vision_model.encoder.layers[-1]
        attn = block.self_attn
        y = x + attn.out_proj(attn.v_proj(block.layer_norm1(x)))
        return y + block.mlp(block.layer_norm2(y))

    @torch.no_grad()
    def pixel_features(self, images: torch.Tensor):
        """`(V [L, B, M, D], g [B, D], (h, w))`, both L2-normalised; images `[B, 3, H, W]`."""
        vision = self.clip.vision_model
        h, w = (s // vision.embeddings.patch_size for s in images.shape[-2:])
        if h != w:
            raise NotImplementedError("the twin handles square token grids only")
        self._set_grid(h)
        out = vision(pixel_values=images, output_hidden_states=True)
        hidden = out.hidden_states
        assert len(hidden) == self.depth + 1, "hidden_states: ln_pre output, then every block"
        feats = []
        for i in self.layers:
            if i == self.depth - 1 and self.cfg.dense_mode == "value":
                tokens = self._value_path(hidden[i][:, 1:])  # hidden[i]: the last block's input
            else:
                tokens = hidden[i + 1][:, 1:]
            feats.append(self.clip.visual_projection(vision.post_layernorm(tokens)))
        g = self.clip.visual_projection(out.pooler_output)
        return normalize(torch.stack(feats)), normalize(g), (h, w)

    # The segmenter.
    def segment(self, images: torch.Tensor, text: torch.Tensor):
        """`(logits [B, K, h, w], layer_logits [L, B, K, h, w], V)` for text `[K, N, D]`."""
        v, g, (h, w) = self.pixel_features(images)
        gt = g[:, None, None, :] * text[None]  # [B, K, N, D]
        tt = text[None].expand_as(gt)
        ot, maps = self.cfg.ot, []
        for idx, pixels in enumerate(v):
            q = tt
            if self.dlfa is not None:
                r = self.dlfa[idx](torch.cat([gt, tt], dim=-1))
                q = normalize(tt + r if self.cfg.alignment_residual else r)
            s = torch.einsum("bmd,bknd->bkmn", pixels, q)
            m, n = s.shape[-2:]
            if ot.enabled:
                cost = 1 - s
                plan = sinkhorn_log(
                    cost if ot.plan_gradient else cost.detach(), ot.epsilon, ot.num_iterations
                )
                score = m * n * (plan * s).sum(-1)
            else:
                score = s.sum(-1)  # the uniform plan 1/(MN)
            if self.cfg.learn_temperature:
                score = self.log_temperature.exp() * score / n + self.score_bias
            maps.append(score.reshape(*score.shape[:2], h, w))
        layer_logits = torch.stack(maps)
        return layer_logits.mean(0), layer_logits, v

    def loss(self, images, labels, names, loss_cfg):
        """`(loss, layer_logits)`: focal + dice (+ per-layer terms) + text consistency."""
        text = self.text_features(names)
        logits, layer_logits, _ = self.segment(images, text)
        size = labels.shape[-2:]
        kw = dict(
            focal_weight=loss_cfg.focal_weight,
            dice_weight=loss_cfg.dice_weight,
            alpha=loss_cfg.focal_alpha,
            gamma=loss_cfg.focal_gamma,
            ignore_as_negative=loss_cfg.ignore_as_negative,
        )
        total = focal_dice(upsample(logits, size), labels, **kw)[0]
        for layer in layer_logits if loss_cfg.layer_weight > 0 else ():
            total = total + loss_cfg.layer_weight * focal_dice(upsample(layer, size), labels, **kw)[0]
        weight = self.cfg.text_consistency_weight
        if weight > 0:
            ref = normalize(self.template_features(names, self.cfg.templates).mean(1))
            total = total + weight * (1 - torch.einsum("knd,kd->kn", text, ref)).mean()
        return total, layer_logits

    @torch.no_grad()
    def predict(self, images, names, *, seen_penalty=0.0, unseen=()) -> torch.Tensor:
        """Label maps `[B, H, W]`: sigmoid (ensembled), seen penalty, argmax over all K."""
        logits, _, v = self.segment(images, self.text_features(names))
        size = images.shape[-2:]
        scores = torch.sigmoid(upsample(logits, size))
        w = self.cfg.ensemble_weight
        if w > 0:
            ref = self.template_features(names, self.cfg.templates)
            deepest = v[self.layers.index(max(self.layers))]
            cos = torch.einsum("bmd,ktd->bkm", deepest, ref) / ref.shape[1]
            scale = self.clip.logit_scale.exp().clamp(max=100.0)
            free = (scale * cos).reshape(logits.shape)
            scores = scores ** (1 - w) * torch.softmax(upsample(free, size), dim=1) ** w
        penalty = torch.tensor([0.0 if k in set(unseen) else seen_penalty for k in range(len(names))])
        return (scores - penalty[None, :, None, None]).argmax(1)
