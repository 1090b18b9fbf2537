"""The inference-time ensemble with the training-free template scores (`model.ensemble_weight`)."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from zegot_jax import inference
from zegot_jax.evaluation import evaluator
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional, zegot

NAMES = ("cat", "dog", "grass", "sky", "road")


def _config(weight, mode="whole"):
    config = common.get_config()
    config.data.name = "voc"
    common.apply_smoke(config)
    config.model.ensemble_weight = weight
    config.eval.mode = mode
    return config


def test_log_scores_interpolate_between_the_two_models():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, 4, 3, 3)), jnp.float32)
    free = jnp.asarray(rng.normal(size=(1, 4, 3, 3)), jnp.float32)
    np.testing.assert_allclose(
        evaluator.ensemble_log_scores(logits, free, 0.0), jax.nn.log_sigmoid(logits), rtol=1e-6
    )
    np.testing.assert_allclose(
        evaluator.ensemble_log_scores(logits, free, 1.0), jax.nn.log_softmax(free, axis=1), rtol=1e-6
    )
    # Padding classes (from num_valid on) take no probability mass from the real ones.
    padded = evaluator.ensemble_log_scores(logits, free, 1.0, num_valid=3)
    np.testing.assert_allclose(padded[:, :3], jax.nn.log_softmax(free[:, :3], axis=1), rtol=1e-6)


def test_full_weight_predicts_what_the_training_free_model_predicts(tiny_clip):
    """w = 1 is the training-free baseline, whatever was trained; w = 0 is the model alone."""
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
    preds = {}
    for weight in (0.0, 1.0):
        config = _config(weight)
        parts = functional.split_model(build_lib.build_model(config, tiny_clip))
        params = jax.tree.map(lambda x: x + 0.3, parts.params)  # "trained" away from the init
        text = evaluator.text_features_of(parts.graphdef, params, parts.frozen, NAMES, 16)
        reference = evaluator.reference_features_of(parts.graphdef, params, parts.frozen, config, NAMES)
        assert (reference is None) == (weight == 0.0)
        predict = evaluator.make_predictor(parts.graphdef, config)
        preds[weight] = np.asarray(predict(params, parts.frozen, text, images, (32, 32), reference)).argmax(0)
    free_config = _config(0.0)
    free_config.model = zegot.training_free_config(free_config.model)
    graphdef, params, frozen = evaluator.training_free_parts(_config(0.0), tiny_clip)
    free_text = evaluator.text_features_of(graphdef, params, frozen, NAMES, 16)
    free = np.asarray(
        evaluator.make_predictor(graphdef, free_config)(params, frozen, free_text, images, (32, 32))
    ).argmax(0)
    np.testing.assert_array_equal(preds[1.0], free)
    assert (preds[0.0] != free).any()  # the check can tell the two models apart


def test_segmenter_applies_the_ensemble_the_same_way(tiny_clip):
    """`Segmenter` (padded vocabularies, slide mode) agrees with the evaluator's predictor."""
    config = _config(0.5, mode="slide")
    model = build_lib.build_model(config, tiny_clip)
    seg = inference.Segmenter.from_model(model, config, vocab_bucket=8)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    result = seg.segment(image, NAMES, calibrate=False)
    parts = functional.split_model(model)
    text = evaluator.text_features_of(parts.graphdef, parts.params, parts.frozen, NAMES, 16)
    reference = evaluator.reference_features_of(parts.graphdef, parts.params, parts.frozen, config, NAMES)
    from zegot_jax.data import transforms

    size = inference.processed_size(
        40, 48, short_side=config.data.eval_short_side, patch=tiny_clip.spec.patch_size, whole=False
    )
    batch = jnp.asarray(transforms.normalize(transforms.resize(image, size, nearest=False)))[None]
    scores = evaluator.make_predictor(parts.graphdef, config)(
        parts.params, parts.frozen, text, batch, (40, 48), reference
    )
    np.testing.assert_allclose(result.scores, np.asarray(scores), rtol=1e-4, atol=1e-6)
