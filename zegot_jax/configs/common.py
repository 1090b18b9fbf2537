"""Shared defaults for every experiment: the reconstructed method (README) with its documented values.

Each experiment config (`configs/voc.py`, `context.py`, `coco.py`, `ade.py`, and `synthetic.py` in
this package) starts from `get_config()` and changes only what differs; `configs/common.py`
re-exports this module. Every hyper-parameter of the method is a field here; nothing is hidden in
library code. Field groups: `clip` (backbone), `model` (prompts, layers, DLFA, MPOT), `loss`,
`optim`, `train`, `distributed`, `data`, `eval`.
"""

import ml_collections

# The hand-crafted templates OTSeg uses in place of learned prompts (VOC: the first six).
TEMPLATES = (
    "a photo of a {}.",
    "a portrait of a {}.",
    "a part of a {}.",
    "a segment of a {}.",
    "a photo of small {}.",
    "a photo of medium {}.",
    "a photo of large {}.",
    "a background of a {}.",
)


def get_config() -> ml_collections.ConfigDict:
    """Returns the defaults (ViT-B/16 at 512x512, N=4 prompts, layers 5/7/11, epsilon 0.05)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Backbone: a path or hub id of CLIP weights, 'random:<variant>' (tests), or 'synthetic'.
    c.clip = ml_collections.ConfigDict()
    c.clip.weights = "openai/clip-vit-base-patch16"
    c.clip.dtype = "float32"  # compute dtype of the frozen towers; OT and losses stay float32
    c.clip.text_context_length = 77  # may be shortened for speed (positional table truncated)
    c.clip.activation = ""  # '' = as the checkpoint says; 'quick_gelu'/'gelu' for bare state dicts
    # Attention heads per tower: 0 = as the checkpoint's config says, else the known variant of
    # that width; a bare state dict of another width (open_clip's ViT-H/14: 16) needs them here.
    c.clip.vision_heads = 0
    c.clip.text_heads = 0

    c.model = ml_collections.ConfigDict()
    c.model.prompts = "learned"  # 'learned' (N contexts) or 'templates' (hand-crafted, no training)
    c.model.num_prompts = 4  # N
    c.model.context_tokens = 8  # L_ctx vectors per prompt, shared across classes
    c.model.prompt_init_std = 0.02
    # Guards against over-fitting the seen classes (RESULTS.md measures each one).
    c.model.prompt_init = "templates"  # 'templates': contexts start as the words below; 'random'
    c.model.init_templates = ("a photo of a", "a picture of a", "an image of a", "a photo of the")
    c.model.text_consistency_weight = 0.0  # KgCoOp: weight x mean(1 - cos(t, template feature));
    # KgCoOp used 8; on the synthetic benchmark 8 lowered every score (RESULTS.md), hence 0.
    c.model.learn_temperature = True  # logits = t * score / N + b, t and b learned
    c.model.temperature_init = 10.0  # SigLIP's initial t ...
    c.model.bias_init = -10.0  # ... and b
    c.model.ensemble_weight = 0.0  # inference: scores^(1-w) x training-free probabilities^w
    c.model.templates = TEMPLATES  # used when prompts == 'templates' (N = len(templates))
    c.model.layers = (5, 7, 11)  # 0-indexed frozen image-encoder layers
    c.model.dense_mode = "standard"  # last-layer pixel features: 'standard' or 'value' (MaskCLIP)
    c.model.global_pool = "class"  # DLFA's g: 'class' token, or 'mean' of the patch embeddings
    c.model.alignment = True  # DLFA relationship descriptor per layer (False: q = t)
    c.model.alignment_residual = True  # q = norm(t + W[g*t; t] + b), W = 0 at start; False: OTSeg's
    # How the text tower computes, not what: both give the same features and gradients.
    c.model.prefix_shared = True  # encode [SOS] ctx once per prompt, class names after it
    c.model.text_remat = False  # rematerialise the text blocks in the backward pass
    c.model.max_classes = 512  # largest vocabulary accepted (guards memory: S is [L,B,K,M,N])
    c.model.ot = ml_collections.ConfigDict()
    c.model.ot.enabled = True  # False: uniform plan (the "no OT" ablation)
    c.model.ot.epsilon = 0.05
    c.model.ot.tau = 1.0  # marginal relaxation; 1.0 = balanced, < 1 = unbalanced
    c.model.ot.plan_gradient = True  # False: stop_gradient on the plan (PLOT-style)
    # How the plan is computed (BENCHMARKS.md, "MPOT solvers", measures each choice).
    # 'newton' (semi-dual, balanced only), 'sinkhorn' (ott-jax), or any transport registered with
    # zegot_jax.ot.register_transport (in this file, or a module it imports; see zegot_jax.ot).
    c.model.ot.solver = "newton"
    c.model.ot.newton_steps = 10  # solver='newton'
    c.model.ot.num_iterations = 100  # 'sinkhorn': exactly this many (threshold 0) or at most;
    # other transports (all but 'newton'): their iteration budget
    c.model.ot.threshold = 0.0  # solver='sinkhorn': > 0 stops at this marginal error
    c.model.ot.domain = "auto"  # solver='sinkhorn': 'log', 'kernel' or 'auto' (kernel if safe)
    # 'implicit' (exact at convergence, O(MN); transports declared balanced-entropic, autodiff for
    # the others) or 'unrolled' (autodiff always)
    c.model.ot.backward = "implicit"
    # Free-form options of the transport (settings.options); a field must exist here to be
    # overridden from the command line: the config argument solver=<name> creates its fields.
    c.model.ot.options = ml_collections.ConfigDict()

    c.loss = ml_collections.ConfigDict()
    c.loss.focal_weight = 100.0
    c.loss.dice_weight = 1.0
    c.loss.focal_alpha = 0.25
    c.loss.focal_gamma = 2.0
    c.loss.ignore_as_negative = True  # OTSeg quirk: ignore pixels are focal negatives
    c.loss.layer_weight = 0.0  # deep supervision: weight of each per-layer auxiliary loss
    c.loss.per_image = True  # upsample + loss one image at a time (same value, 1/B of the memory)
    # Point-sampled loss (PointRend / Mask2Former): > 0 reads this many points per image instead
    # of every label pixel. Off by default: 1.4-1.6x faster at 512 but -2.4 seen mIoU on the
    # synthetic world over 5 seeds (BENCHMARKS.md, "The point-sampled loss").
    c.loss.num_points = 0
    c.loss.point_oversample = 3.0  # uniform candidates per point
    c.loss.point_importance = 0.75  # share of points taken where the logits are most uncertain

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-4
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 1500
    c.optim.poly_power = 0.9
    c.optim.min_learning_rate = 1e-6
    c.optim.grad_clip_norm = 0.0  # 0 disables clipping

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 16  # independent of the number of devices
    c.train.num_steps = 80_000
    c.train.log_every = 50
    c.train.checkpoint_every = 2000
    c.train.keep_checkpoints = 2
    c.train.eval_every = 0  # 0: evaluate once, at the end
    c.train.init_from = ""  # a workdir or checkpoint to start from (transductive self-training)
    # A jax.profiler trace of steps (first, last) into workdir/tensorboard/plugins/profile/
    # (TensorBoard's profile tab, XProf); () is off. profile_process: which process traces
    # (-1: every process).
    c.train.profile_steps = ()
    c.train.profile_process = 0

    # Multi-process start (zegot_jax/distributed.py): 'auto' joins a job where JAX detects a
    # cluster (TPU pod, GKE, Slurm, Open MPI) or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    # JAX_PROCESS_ID name one, and never waits on one host; 'on' always joins; 'off' never does.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = "auto"
    # Seconds without a heartbeat after which a lost process ends the others (README, Training).
    c.distributed.heartbeat_timeout_s = 60

    c.data = ml_collections.ConfigDict()
    c.data.name = "coco_stuff"
    c.data.source = "tfds"  # 'tfds' (prepared builders), 'random' (smoke tests), 'synthetic'
    c.data.data_dir = ""  # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
    c.data.label_mode = "inductive"  # 'inductive', 'transductive' or 'supervised'
    c.data.crop_size = 512
    c.data.base_size = (2048, 512)
    c.data.ratio_range = (0.5, 2.0)
    c.data.cat_max_ratio = 0.75
    c.data.num_workers = 2
    # Training reads: threads and batches read ahead in each process (grain's ReadOptions; these
    # are grain's defaults, sized for decoding real images).
    c.data.read_threads = 16
    c.data.read_ahead = 500
    c.data.eval_short_side = 512
    c.data.eval_max_images = 0  # 0: the whole split

    c.eval = ml_collections.ConfigDict()
    c.eval.mode = "slide"  # 'slide' or 'whole'
    c.eval.crop = 512
    c.eval.stride = 426
    c.eval.seen_penalty = 0.1  # subtracted from seen-class sigmoid scores (inductive calibration)
    c.eval.batch_size = 1
    c.eval.training_free_baseline = False  # also score the training-free templates (same images)
    c.eval.figure = True  # write predictions.png after the final evaluation (compiles 2 programs)
    return c


VARIANT_ARGS = ("inductive", "transductive", "supervised", "smoke")


def parse_arg(arg: str | None) -> set[str]:
    """Splits a config argument such as 'transductive,smoke'; unknown words fail at launch.

    `solver=<name>` picks a registered transport and gives `model.ot.options` its declared
    fields, so each can be overridden on the command line, e.g.
    `--config=configs/synthetic.py:solver=semi_relaxed --config.model.ot.options.rho=0.5`.
    """
    words = {w.strip() for w in (arg or "").split(",") if w.strip()}
    unknown = {w for w in words - set(VARIANT_ARGS) if not w.startswith("solver=")}
    if unknown:
        raise ValueError(
            f"Unknown config variant(s) {sorted(unknown)}; choose from "
            f"{', '.join(VARIANT_ARGS)} or solver=<name> (comma-separated, e.g. "
            "':transductive,smoke')."
        )
    if len(words & {"inductive", "transductive", "supervised"}) > 1:
        raise ValueError("Pick one of inductive, transductive, supervised.")
    return words


def apply_variants(
    c: ml_collections.ConfigDict, words: set[str], *, transductive_steps: int
) -> ml_collections.ConfigDict:
    """Applies the label mode and the ':smoke' size to a dataset config."""
    if "transductive" in words:
        c.data.label_mode = "transductive"
        c.train.num_steps = transductive_steps
        c.eval.seen_penalty = 0.0
    elif "supervised" in words:
        c.data.label_mode = "supervised"
        c.eval.seen_penalty = 0.0
    if "smoke" in words:
        apply_smoke(c)
    for word in words:
        if word.startswith("solver="):
            use_transport(c, word.removeprefix("solver="))
    return c


def use_transport(c: ml_collections.ConfigDict, name: str) -> None:
    """Sets `model.ot.solver = name` and `model.ot.options` to the transport's declared defaults."""
    from zegot_jax import ot  # noqa: PLC0415 (only configs that pick a transport need it)

    c.model.ot.solver = name
    c.model.ot.options = ml_collections.ConfigDict(ot.default_options(name))


def apply_smoke(c: ml_collections.ConfigDict) -> None:
    """A few steps of a tiny random CLIP on tiny random data, on CPU, in seconds."""
    c.clip.weights = "random:tiny"
    c.clip.text_context_length = 16
    c.model.layers = (1, 2)
    c.model.num_prompts = 2
    c.model.context_tokens = 4
    c.model.ot.num_iterations = 5
    c.data.source = "random"
    c.data.crop_size = 32
    c.data.base_size = (64, 32)
    c.data.eval_short_side = 32
    c.data.eval_max_images = 2
    c.data.num_workers = 0
    c.train.global_batch_size = 2
    c.train.num_steps = 3
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.optim.warmup_steps = 1
    c.eval.crop = 32
    c.eval.stride = 24
