"""The launch-time config validator: one table, every field of the defaults covered."""

import importlib

import ml_collections
import pytest

from configs import common
from zegot_jax.configs import checks as config_checks


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_default_field_has_a_rule():
    ruled = {rule.field for rule in config_checks.RULES}
    missing = sorted(set(_leaves(common.get_config())) - ruled)
    assert not missing, f"add rows to config_checks.RULES for {missing}"


@pytest.mark.parametrize("name", ["voc", "context", "coco", "ade", "synthetic"])
@pytest.mark.parametrize("arg", [None, "smoke", "supervised"])
def test_shipped_configs_pass(name, arg):
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    assert config_checks.problems(config, num_devices=1) == []


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("train.keep_checkpoints", 0, "delete every checkpoint"),
        ("optim.learning_rate", -2e-4, "gradient ascent"),
        ("optim.learning_rate", float("nan"), "finite"),
        ("model.num_prompts", 0, "integer >= 1"),
        ("train.checkpoint_every", 0, "integer >= 1"),
        ("train.log_every", -1, "integer >= 1"),
        ("model.ot.epsilon", 0.0, "> 0"),
        ("model.ot.tau", 1.5, "(0, 1]"),
        ("loss.focal_alpha", 2.0, "[0, 1]"),
        ("loss.dice_weight", float("inf"), "finite"),
        ("model.layers", (), "non-empty"),
        ("eval.mode", "sliding", "'slide' or 'whole'"),
        ("train.profile_steps", (5, 3), "1 <= first <= last"),
        ("train.profile_steps", (0, 2), "1 <= first <= last"),
        ("train.profile_steps", (4,), "() (off) or (first, last)"),
        ("distributed.initialize", "yes", "'auto', 'on' or 'off'"),
        ("distributed.heartbeat_timeout_s", 0, "integer >= 1"),
    ],
)
def test_one_message_naming_the_field(smoke_config, field, value, words):
    section, key = field.rsplit(".", 1)
    parent = smoke_config
    for part in section.split("."):
        parent = parent[part]
    with parent.ignore_type():
        parent[key] = value
    found = config_checks.problems(smoke_config)
    assert len(found) == 1 and found[0].startswith(f"{field}=") and words in found[0], found


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"data.crop_size": 100}, "data.crop_size=100 is larger than any training image"),
        ({"eval.stride": 40}, "eval.stride=40 is larger than eval.crop=32"),
        ({"optim.min_learning_rate": 1.0}, "optim.min_learning_rate=1 is above"),
        ({"model.context_tokens": 14}, "leaves no room for a class name"),
    ],
)
def test_relations_between_fields(smoke_config, changes, words):
    for key, value in changes.items():
        section, field = key.rsplit(".", 1)
        smoke_config[section.split(".")[0]][field] = value
    assert any(words in p for p in config_checks.problems(smoke_config))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"tau": 0.8}, "solves balanced problems only"),
        ({"solver": "sinkhorn", "threshold": 1e-5, "backward": "unrolled"}, "cannot unroll"),
    ],
)
def test_ot_solver_relations(smoke_config, changes, words):
    smoke_config.model.ot.update(changes)
    assert any(words in p for p in config_checks.problems(smoke_config))
    smoke_config.model.ot.update(solver="sinkhorn", backward="implicit")
    assert not config_checks.problems(smoke_config)


def test_batch_must_divide_over_devices_and_all_problems_are_listed(smoke_config):
    smoke_config.train.global_batch_size = 3
    smoke_config.train.keep_checkpoints = 0
    with pytest.raises(ValueError) as info:
        config_checks.check(smoke_config, num_devices=2)
    lines = str(info.value).splitlines()
    assert lines[0] == "Invalid config (2 problems):"
    assert "not divisible by the 2 devices" in lines[2] and "train.keep_checkpoints" in lines[1]


def test_absent_and_unknown_fields_are_skipped():
    config = ml_collections.ConfigDict({"model": {"num_prompts": 4, "something_new": "x"}})
    assert config_checks.problems(config, num_devices=4) == []
    config.model.ensemble_weight = 1.5  # a rule for a field other configs do not have yet
    assert config_checks.problems(config) == ["model.ensemble_weight=1.5: must be a number in [0, 1]."]


def test_sections_limit_what_is_checked(smoke_config):
    smoke_config.train.num_steps = -1
    assert config_checks.problems(smoke_config, sections=config_checks.EVALUATION_SECTIONS) == []
    assert config_checks.problems(smoke_config) == [
        "train.num_steps=-1: must be an integer >= 0 (0: evaluate the model as built)."
    ]


def test_solver_is_any_registered_transport_and_its_options_are_checked(smoke_config):
    from zegot_jax import ot  # noqa: PLC0415

    smoke_config.model.ot.solver = "my_transport"
    found = config_checks.problems(smoke_config)
    assert found == [
        "model.ot.solver='my_transport': must be a registered transport (newton, "
        f"sinkhorn{''.join(', ' + n for n in ot.registered_transports()[2:])}); "
        "register one with zegot_jax.ot.register_transport('my_transport', fn) "
        "first."
    ]
    ot.register_transport("my_transport", lambda p, s: p.similarity, options={"rho": 1.0})
    try:
        assert config_checks.problems(smoke_config) == []
        smoke_config.model.ot.options.rhoo = 2.0
        assert config_checks.problems(smoke_config) == [
            "model.ot.options has field(s) ['rhoo'] that transport 'my_transport' does not take; "
            "its options: rho."
        ]
    finally:
        ot.unregister_transport("my_transport")


def test_transport_options_can_be_overridden_from_the_command_line():
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    def parse(*argv):  # config_flags finds the overrides in sys_argv
        values = flags.FlagValues()
        argv = ["prog", "--config=configs/voc.py:smoke,solver=semi_relaxed", *argv]
        config_flags.DEFINE_config_file(
            "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
        )
        values(argv)
        return values.config

    config = parse("--config.model.ot.options.rho=0.25")
    assert config.model.ot.solver == "semi_relaxed" and config.model.ot.options.rho == 0.25
    assert config_checks.problems(config) == []
    with pytest.raises((flags.Error, AttributeError), match="rho"):  # a typo still fails
        parse("--config.model.ot.options.rhoo=0.25")
    with pytest.raises(ValueError, match="Unknown OT solver 'nope'"):
        importlib.import_module("configs.voc").get_config("solver=nope")


@pytest.mark.parametrize(
    "changes, words",
    [
        (
            {"data.crop_size": 30},
            "data.crop_size=30 is not a multiple of the CLIP patch size 8 "
            "(clip.weights='random:tiny'); use e.g. 24 or 32.",
        ),
        ({"eval.crop": 30, "eval.stride": 20}, "eval.crop=30 is not a multiple of the CLIP patch"),
        ({"eval.mode": "whole", "data.eval_short_side": 30}, "data.eval_short_side=30 is not a"),
        (
            {"clip.weights": "openai/clip-vit-base-patch16", "data.crop_size": 40},
            "data.crop_size=40 is not a multiple of the CLIP patch size 16",
        ),
    ],
)
def test_sizes_must_be_whole_patches(smoke_config, changes, words):
    # Each of these failed only at step 1 ("image height and width ... must be multiples").
    for key, value in changes.items():
        section, field = key.split(".")
        smoke_config[section][field] = value
    assert any(words in p for p in config_checks.problems(smoke_config))


def test_patch_size_from_the_weights_name(smoke_config):
    for weights, patch in (
        ("random:tiny", 8),
        ("ViT-L/14", 14),
        ("openai/clip-vit-base-patch32", 32),
        ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", 14),
        ("w.pt", None),
    ):
        smoke_config.clip.weights = weights
        assert config_checks.patch_size(smoke_config) == patch, weights
