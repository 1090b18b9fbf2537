"""Every config value checked at launch, before a model is built or a workdir is created.

`RULES` is the one table: a dotted field, a test of its value, and what the value must be. A field a
config does not have is skipped (experiment configs differ, and saved runs predate newer fields), so
a new field needs one row here and nothing else. `RELATIONS` are the checks that read several
fields (sizes that must divide, crops the data allows); one whose fields are absent is skipped.

    check(config)   # ValueError listing every problem, one line each, naming the field
"""

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import ml_collections

from zegot_jax import distributed, ot, sharding
from zegot_jax.clip.variants import ACTIVATIONS, HUB_IDS, VARIANTS
from zegot_jax.configs.overrides import ABSENT, flatten, get
from zegot_jax.data.setup import LABEL_MODES, SOURCES
from zegot_jax.models.build import DTYPES
from zegot_jax.models.zegot import DENSE_MODES, GLOBAL_POOLS, PROMPT_INITS, PROMPTS
from zegot_jax.ot.mpot import BACKWARDS, threshold_problem
from zegot_jax.ot.solvers import DOMAINS


class Rule(NamedTuple):
    """`field` (dotted) is valid when `ok(value)`; otherwise the message says it `must` be so."""

    field: str
    ok: Callable[[Any], bool]
    must: str | Callable[[Any], str]  # a text, or one made from the value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int) -> Callable[[Any], bool]:
    """An int (not a bool) >= `lo`."""
    return lambda v: _is_int(v) and v >= lo


def real(lo: float = -math.inf, hi: float = math.inf, *, above: bool = False) -> Callable[[Any], bool]:
    """A finite number in `[lo, hi]` (`(lo, hi]` when `above`)."""
    return lambda v: _is_real(v) and (v > lo if above else v >= lo) and v <= hi


def one_of(*choices: Any) -> Callable[[Any], bool]:
    """One of `choices`."""
    return lambda v: v in choices


def boolean(v: Any) -> bool:
    """A bool."""
    return isinstance(v, bool)


def text(v: Any) -> bool:
    """A str (possibly empty)."""
    return isinstance(v, str)


def non_empty_text(v: Any) -> bool:
    """A str that is not empty or only whitespace."""
    return isinstance(v, str) and bool(v.strip())


def size(v: Any) -> bool:
    """A positive int, or a pair (h, w) of them."""
    return integer(1)(v) or (isinstance(v, Sequence) and len(v) == 2 and all(integer(1)(x) for x in v))


def pair_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A pair (a sequence of 2, not a str) whose items both pass `check`."""
    return lambda v: (
        isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(check(x) for x in v)
    )


def int_tuple(v: Any) -> bool:
    """A non-empty tuple of distinct ints >= 0."""
    return (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) > 0
        and all(integer(0)(x) for x in v)
        and len(set(v)) == len(v)
    )


def templates(v: Any) -> bool:
    """A non-empty tuple of texts, each with exactly one `{}` (where the class name goes)."""
    return (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) > 0
        and all(isinstance(t, str) and t.count("{}") == 1 for t in v)
    )


def text_tuple(v: Any) -> bool:
    """A non-empty tuple of non-empty texts."""
    return (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) > 0
        and all(non_empty_text(t) for t in v)
    )


def registered(v: Any) -> bool:
    """The name of a registered transport (`ot.registered_transports()`)."""
    return isinstance(v, str) and v in ot.registered_transports()


def registered_must(v: Any) -> str:
    """The `must` text for a transport `v`: the registered ones, and how to register `v`."""
    return (
        f"a registered transport ({', '.join(ot.registered_transports())}); register one "
        f"with zegot_jax.ot.register_transport({v!r}, fn) first"
    )


def section(v: Any) -> bool:
    """A config section: a ConfigDict, FrozenConfigDict or dict."""
    return isinstance(v, ml_collections.ConfigDict | ml_collections.FrozenConfigDict | dict)


def names(v: Any) -> bool:
    """A tuple (possibly empty) of distinct non-empty texts."""
    return (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and all(non_empty_text(n) for n in v)
        and len(set(v)) == len(v)
    )


def step_range(v: Any) -> bool:
    """() or (first, last) with 1 <= first <= last."""
    return (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and (len(v) == 0 or (len(v) == 2 and all(integer(1)(x) for x in v) and v[0] <= v[1]))
    )


def _choice(field: str, choices: Sequence[str]) -> Rule:
    """The rule for a field that takes one of `choices` (the list its module owns)."""
    quoted = [repr(c) for c in choices]
    return Rule(field, one_of(*choices), ", ".join(quoted[:-1]) + f" or {quoted[-1]}")


# eval.mode's choices are the evaluation's, which sits above the configs: they are kept here.
EVAL_MODES = ("slide", "whole")
POSITIVE = "an integer >= 1"
RULES: tuple[Rule, ...] = (
    Rule("seed", integer(0), "an integer >= 0"),
    Rule("clip.weights", non_empty_text, "a path, hub id, 'random:<variant>' or 'synthetic'"),
    _choice("clip.dtype", tuple(DTYPES)),
    Rule("clip.text_context_length", integer(2), "an integer >= 2"),
    Rule("clip.activation", one_of("", *ACTIVATIONS), "'' (as the checkpoint says), 'quick_gelu' or 'gelu'"),
    Rule("clip.vision_heads", integer(0), "an integer >= 0 (0: as the checkpoint says)"),
    Rule("clip.text_heads", integer(0), "an integer >= 0 (0: as the checkpoint says)"),
    _choice("model.prompts", PROMPTS),
    Rule("model.num_prompts", integer(1), POSITIVE),
    Rule("model.context_tokens", integer(1), POSITIVE),
    Rule("model.prompt_init_std", real(0), "a finite number >= 0"),
    Rule("model.templates", templates, "a non-empty tuple of strings with one '{}' each"),
    Rule("model.layers", int_tuple, "a non-empty tuple of distinct layer indices >= 0"),
    _choice("model.dense_mode", DENSE_MODES),
    _choice("model.global_pool", GLOBAL_POOLS),
    Rule("model.alignment", boolean, "True or False"),
    Rule("model.max_classes", integer(1), POSITIVE),
    _choice("model.prompt_init", PROMPT_INITS),
    Rule("model.alignment_residual", boolean, "True or False"),
    Rule("model.text_consistency_weight", real(0), "a finite number >= 0"),
    Rule("model.init_templates", text_tuple, "a tuple of texts, one per prompt"),
    Rule("model.learn_temperature", boolean, "True or False"),
    Rule("model.temperature_init", real(0, above=True), "a finite number > 0"),
    Rule("model.bias_init", real(), "a finite number"),
    Rule("model.ensemble_weight", real(0, 1), "a number in [0, 1]"),
    Rule("model.prefix_shared", boolean, "True or False"),
    Rule("model.text_remat", boolean, "True or False"),
    Rule("model.ot.enabled", boolean, "True or False"),
    Rule("model.ot.epsilon", real(0, above=True), "a finite number > 0"),
    Rule("model.ot.num_iterations", integer(1), POSITIVE),
    Rule("model.ot.tau", real(0, 1, above=True), "a number in (0, 1] (1 = balanced)"),
    Rule("model.ot.plan_gradient", boolean, "True or False"),
    Rule("model.ot.solver", registered, registered_must),
    Rule("model.ot.options", section, "a config section (the transport's options)"),
    Rule("model.ot.newton_steps", integer(1), POSITIVE),
    Rule("model.ot.threshold", real(0), "a finite number >= 0 (0 = fixed iterations)"),
    _choice("model.ot.domain", DOMAINS),
    _choice("model.ot.backward", BACKWARDS),
    Rule("loss.focal_weight", real(0), "a finite number >= 0"),
    Rule("loss.dice_weight", real(0), "a finite number >= 0"),
    Rule("loss.focal_alpha", real(0, 1), "a number in [0, 1]"),
    Rule("loss.focal_gamma", real(0), "a finite number >= 0"),
    Rule("loss.ignore_as_negative", boolean, "True or False"),
    Rule("loss.layer_weight", real(0), "a finite number >= 0"),
    Rule("loss.per_image", boolean, "True or False"),
    Rule("loss.num_points", integer(0), "an integer >= 0 (0: every label pixel)"),
    Rule("loss.point_oversample", real(1), "a finite number >= 1"),
    Rule("loss.point_importance", real(0, 1), "a number in [0, 1]"),
    Rule(
        "optim.learning_rate",
        real(0, above=True),
        "a finite number > 0 (a negative rate trains by gradient ascent)",
    ),
    Rule("optim.weight_decay", real(0), "a finite number >= 0"),
    Rule("optim.warmup_steps", integer(0), "an integer >= 0"),
    Rule("optim.poly_power", real(0), "a finite number >= 0"),
    Rule("optim.min_learning_rate", real(0), "a finite number >= 0"),
    Rule("optim.grad_clip_norm", real(0), "a finite number >= 0 (0 disables clipping)"),
    Rule("train.global_batch_size", integer(1), POSITIVE),
    Rule("train.num_steps", integer(0), "an integer >= 0 (0: evaluate the model as built)"),
    Rule("train.log_every", integer(1), POSITIVE),
    Rule("train.checkpoint_every", integer(1), POSITIVE),
    Rule(
        "train.keep_checkpoints",
        integer(1),
        "an integer >= 1 (0 would delete every checkpoint, the trained model with them)",
    ),
    Rule("train.eval_every", integer(0), "an integer >= 0 (0: evaluate once, at the end)"),
    Rule("train.init_from", text, "a path (or '' for none)"),
    Rule("train.profile_steps", step_range, "() (off) or (first, last) with 1 <= first <= last"),
    Rule("train.profile_process", integer(-1), "a process index >= 0, or -1 for every process"),
    _choice("distributed.initialize", distributed.MODES),
    Rule("distributed.heartbeat_timeout_s", integer(1), "an integer >= 1 (seconds)"),
    Rule("data.name", non_empty_text, "a dataset name"),
    _choice("data.source", SOURCES),
    Rule("data.data_dir", text, "a path (or '' for TFDS's default)"),
    _choice("data.label_mode", LABEL_MODES),
    Rule("data.crop_size", size, "a positive int or (h, w)"),
    Rule("data.base_size", pair_of(integer(1)), "a pair of positive ints (long, short)"),
    Rule("data.ratio_range", pair_of(real(0, above=True)), "a pair of finite numbers > 0"),
    Rule("data.cat_max_ratio", real(0, 1, above=True), "a number in (0, 1]"),
    Rule("data.num_workers", integer(0), "an integer >= 0"),
    Rule("data.read_threads", integer(1), "an integer >= 1"),
    Rule("data.read_ahead", integer(0), "an integer >= 0"),
    Rule("data.eval_short_side", integer(1), POSITIVE),
    Rule("data.eval_max_images", integer(0), "an integer >= 0 (0: the whole split)"),
    _choice("eval.mode", EVAL_MODES),
    Rule("eval.crop", integer(1), POSITIVE),
    Rule("eval.stride", integer(1), POSITIVE),
    Rule("eval.seen_penalty", real(), "a finite number"),
    Rule("eval.batch_size", integer(1), POSITIVE),
    Rule("eval.training_free_baseline", boolean, "True or False"),
    Rule("eval.figure", boolean, "True or False"),
    Rule("synthetic.world_seed", integer(0), "an integer >= 0"),
    Rule("synthetic.image_size", integer(1), POSITIVE),
    Rule("synthetic.train_images", integer(1), POSITIVE),
    Rule("synthetic.eval_images", integer(1), POSITIVE),
    Rule("synthetic.unseen", names, "a tuple of distinct class names"),
)


def _crop_fits(c) -> str | None:
    crop, base, ratio = get(c, "data.crop_size"), get(c, "data.base_size"), get(c, "data.ratio_range")
    largest = min(base) * max(ratio)
    if max((crop,) if _is_int(crop) else crop) > largest:
        return (
            f"data.crop_size={crop!r} is larger than any training image gets (short side at "
            f"most min(data.base_size) x max(data.ratio_range) = {largest:g}): every crop "
            "would be mostly padding; lower it or raise data.base_size."
        )
    return None


def _synthetic_crop(c) -> str | None:
    if get(c, "data.source") != "synthetic":
        return None
    crop, image = get(c, "data.crop_size"), get(c, "synthetic.image_size")
    if max((crop,) if _is_int(crop) else crop) > image:
        return (
            f"data.crop_size={crop!r} is larger than the synthetic images "
            f"(synthetic.image_size={image}); use at most {image}."
        )
    return None


def _synthetic_batch(c) -> str | None:
    if get(c, "data.source") != "synthetic":
        return None
    batch, images = get(c, "train.global_batch_size"), get(c, "synthetic.train_images")
    if images < batch:
        return (
            f"synthetic.train_images={images} is smaller than train.global_batch_size={batch}; "
            "no full batch can be drawn."
        )
    return None


def _stride(c) -> str | None:
    if get(c, "eval.mode") == "slide" and get(c, "eval.stride") > get(c, "eval.crop"):
        return (
            f"eval.stride={get(c, 'eval.stride')} is larger than eval.crop="
            f"{get(c, 'eval.crop')}: the sliding windows would leave pixels unscored."
        )
    return None


def patch_size(c) -> int | None:
    """The CLIP patch size `clip.weights` names, else None (known once the weights are read).

    A name is 'random:<variant>', 'synthetic', a variant or a hub id with `patchNN` / `ViT-X-NN` in
    it.
    """
    weights = str(get(c, "clip.weights"))
    if weights.startswith("random:") and weights[7:] in VARIANTS:
        return VARIANTS[weights[7:]].patch_size
    if weights == "synthetic":
        patch = get(c, "synthetic.pretrain.model.patch_size")
        return None if patch is ABSENT else patch
    name = {v: k for k, v in HUB_IDS.items()}.get(weights, weights)
    if name in VARIANTS:
        return VARIANTS[name].patch_size
    found = re.search(r"patch(\d+)|ViT-[A-Za-z]+-(\d+)", name)
    return int(found.group(1) or found.group(2)) if found else None


def patch_problems(c, patch: int) -> list[str]:
    """A message for each size that is not a multiple of the CLIP patch size `patch`.

    The towers need whole patches: the training crop, the sliding-window crop, the whole-image short
    side.
    """
    fields = ("data.crop_size", "eval.crop" if get(c, "eval.mode") == "slide" else "data.eval_short_side")
    out = []
    for field in fields:
        value = get(c, field)
        sides = value if isinstance(value, tuple) else (value,)
        if any(side % patch for side in sides):
            near = sorted(
                {max(patch, side // patch * patch) for side in sides}
                | {-(-side // patch) * patch for side in sides}
            )
            out.append(
                f"{field}={value!r} is not a multiple of the CLIP patch size {patch} "
                f"(clip.weights={get(c, 'clip.weights')!r}); use e.g. "
                f"{' or '.join(map(str, near))}."
            )
    return out


def _patch_fits(c) -> str | None:
    patch = patch_size(c)
    return ("; ".join(patch_problems(c, patch)) or None) if patch else None


def _min_rate(c) -> str | None:
    lo, hi = get(c, "optim.min_learning_rate"), get(c, "optim.learning_rate")
    if lo > hi:
        return (
            f"optim.min_learning_rate={lo:g} is above optim.learning_rate={hi:g}: the poly "
            "schedule would rise instead of decay."
        )
    return None


def _prompt_length(c) -> str | None:
    if get(c, "model.prompts") != "learned":
        return None
    ctx, length = get(c, "model.context_tokens"), get(c, "clip.text_context_length")
    if ctx + 4 > length:  # SOS, the contexts, at least one name token, '.', EOT
        return (
            f"model.context_tokens={ctx} leaves no room for a class name in "
            f"clip.text_context_length={length}; use at most {length - 4} context tokens."
        )
    return None


def _ot_solver(c) -> str | None:
    if get(c, "model.ot.solver") == "newton" and get(c, "model.ot.tau") < 1.0:
        return (
            f"model.ot.solver='newton' solves balanced problems only, but model.ot.tau="
            f"{get(c, 'model.ot.tau')}; use solver='sinkhorn' or tau=1."
        )
    if problem := threshold_problem(get(c, "model.ot.threshold"), get(c, "model.ot.backward")):
        return f"model.ot.{problem}"
    return None


def _ot_options(c) -> str | None:
    options = get(c, "model.ot.options")
    try:
        ot.registry.resolve_options(ot.get_transport(get(c, "model.ot.solver")), options)
    except ValueError as e:
        return str(e)
    return None


class Relation(NamedTuple):
    """A check that reads several fields: `check(config) -> message or None`.

    It runs only when every field in `fields` is present and passed its rule.
    """

    fields: tuple[str, ...]
    check: Callable[[ml_collections.ConfigDict], str | None]


RELATIONS: tuple[Relation, ...] = (
    Relation(("data.crop_size", "data.base_size", "data.ratio_range"), _crop_fits),
    Relation(("data.source", "data.crop_size", "synthetic.image_size"), _synthetic_crop),
    Relation(("data.source", "train.global_batch_size", "synthetic.train_images"), _synthetic_batch),
    Relation(("eval.mode", "eval.stride", "eval.crop"), _stride),
    Relation(
        ("clip.weights", "data.crop_size", "eval.mode", "eval.crop", "data.eval_short_side"), _patch_fits
    ),
    Relation(("optim.min_learning_rate", "optim.learning_rate"), _min_rate),
    Relation(("model.prompts", "model.context_tokens", "clip.text_context_length"), _prompt_length),
    Relation(("model.ot.solver", "model.ot.tau", "model.ot.threshold", "model.ot.backward"), _ot_solver),
    Relation(("model.ot.solver", "model.ot.options"), _ot_options),
)


EVALUATION_SECTIONS = ("seed", "clip", "model", "data", "eval", "synthetic")  # what evaluate.py reads


def problems(
    config: ml_collections.ConfigDict,
    *,
    num_devices: int | None = None,
    sections: Sequence[str] | None = None,
) -> list[str]:
    """One message per invalid value or inconsistent group of values (empty when all is well).

    Args:
        config: an experiment config.
        num_devices: devices of the training mesh; `train.global_batch_size` must divide over them.
        sections: check only fields in these top-level sections (default: all).
    """

    def wanted(field: str) -> bool:
        return sections is None or field.split(".")[0] in sections

    found, bad = [], set()
    for rule in RULES:
        value = get(config, rule.field)
        if not wanted(rule.field) or value is ABSENT or rule.ok(value):
            continue
        bad.add(rule.field)
        must = rule.must(value) if callable(rule.must) else rule.must
        found.append(f"{rule.field}={value!r}: must be {must}.")
    for relation in RELATIONS:
        if any(not wanted(f) or get(config, f) is ABSENT or f in bad for f in relation.fields):
            continue
        if (message := relation.check(config)) is not None:
            found.append(message)
    batch = get(config, "train.global_batch_size")
    if (
        num_devices
        and wanted("train")
        and batch is not ABSENT
        and "train.global_batch_size" not in bad
        and (problem := sharding.batch_problem(batch, num_devices))
    ):
        found.append(problem)
    return found


def check(
    config: ml_collections.ConfigDict,
    *,
    num_devices: int | None = None,
    sections: Sequence[str] | None = None,
) -> None:
    """Raises ValueError naming every problem of `problems` (one per line)."""
    found = problems(config, num_devices=num_devices, sections=sections)
    if len(found) == 1:
        raise ValueError(f"Invalid config: {found[0]}")
    if found:
        raise ValueError(f"Invalid config ({len(found)} problems):\n  " + "\n  ".join(found))


# The fields a resumed run may change: how long and how often, evaluation-only settings, how
# (not what) the text tower computes, how processes start and which steps are traced. Anything
# else alters the model, the data or the optimisation, and is refused.
RESUMABLE = (
    "train.num_steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.init_from",
    "train.profile_steps",
    "train.profile_process",
    "distributed.initialize",
    "distributed.heartbeat_timeout_s",
    "data.num_workers",
    "data.data_dir",
    "data.eval_short_side",
    "data.eval_max_images",
    "eval.mode",
    "eval.crop",
    "eval.stride",
    "eval.seen_penalty",
    "eval.batch_size",
    "eval.training_free_baseline",
    "eval.figure",
    "model.ensemble_weight",
    "model.prefix_shared",
    "model.text_remat",
    "loss.per_image",
    "synthetic.eval_images",
)


def resume_changes(saved: dict, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
    """`(field, saved value, new value)` for every field that may not change on a resume, but did.

    That is every field both configs have that differs and is not in `RESUMABLE`.
    """
    old = flatten(saved)
    new = flatten(json.loads(config.to_json_best_effort()))
    return [
        (k, old[k], new[k])
        for k in sorted(old.keys() & new.keys())
        if old[k] != new[k] and k not in RESUMABLE
    ]
