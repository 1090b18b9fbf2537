"""grain pipelines: invariants of the augmentation, determinism, shards, resume, eval, sharding."""

import io
import itertools

import grain.python as grain
import jax
import numpy as np
import PIL.Image
import pytest
from jax.sharding import Mesh

from zegot_jax import sharding
from zegot_jax.data import pipeline, prepare
from zegot_jax.data import transforms as T
from zegot_jax.data.builders import voc

from . import fakes

K = 20
UNSEEN = (15, 16, 17, 18, 19)
COLOURS = np.stack(
    [np.arange(256) * 9 % 256, 255 - np.arange(256) * 5 % 256, np.arange(256) * 41 % 256], 1
).astype(np.uint8)


def _jpeg(image):
    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def block_source(n=8, seed=0, encode=False, ids=tuple(range(K))):
    """Labels in 8x8 blocks of `ids` (+255); image colour = COLOURS[id] (so pixels name ids)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 40 + 8 * (i % 3), 56
        grid = rng.choice(list(ids) + [255], size=(h // 8, w // 8))
        label = np.kron(grid, np.ones((8, 8), int)).astype(np.uint8)
        image = COLOURS[label]
        out.append({"image": _jpeg(image) if encode else image, "label": label})
    return out


def _train(source, **kw):
    args = dict(
        batch_size=2,
        crop_size=32,
        seed=0,
        num_classes=K,
        unseen=UNSEEN,
        base_size=(128, 32),
        process_index=0,
        process_count=1,
    )
    return pipeline.train_iterator(source, **{**args, **kw})


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_shapes_dtypes_and_label_values():
    batch = next(_train(block_source(), crop_size=(24, 40)))
    assert batch["image"].shape == (2, 24, 40, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 24, 40) and batch["label"].dtype == np.int32
    ids = (1, 3, 7, 15, 16, 18)  # three seen (ranks 1, 3, 7) and three unseen classes
    for mode, allowed in [("inductive", {1, 3, 7}), ("transductive", set(ids)), ("supervised", set(ids))]:
        batches = _take(_train(block_source(ids=ids), label_mode=mode, batch_size=4), 4)
        values = set(np.unique(np.concatenate([b["label"] for b in batches])).tolist())
        assert values == allowed | {255}, (mode, values)


def test_image_and_label_stay_aligned_through_rescale_crop_flip():
    it = _train(
        block_source(),
        photometric=False,
        normalize=False,
        flip_prob=0.5,
        crop_size=48,
        label_mode="supervised",
    )
    flipped_seen = 0
    for batch in _take(it, 4):
        for image, label in zip(batch["image"], batch["label"], strict=True):
            # Interior pixels (3x3 constant label) must show their class colour.
            lab = label.astype(int)
            core = np.ones_like(lab, bool)
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                core &= np.roll(lab, (dy, dx), (0, 1)) == lab
            core[[0, -1]] = core[:, [0, -1]] = False
            core &= lab != 255
            error = np.abs(image[core].astype(int) - COLOURS[lab[core]].astype(int)).max()
            assert error < 40, error
            mirrored = np.abs(image[:, ::-1][core].astype(int) - COLOURS[lab[core]].astype(int)).max()
            flipped_seen += mirrored > 40
    assert flipped_seen > 0  # the check can tell a misaligned flip apart


def test_padding_when_the_rescaled_image_is_smaller_than_the_crop():
    batch = next(
        _train(
            block_source(),
            crop_size=64,
            base_size=(64, 16),
            ratio_range=(1, 1),
            normalize=False,
            photometric=False,
            label_mode="supervised",
        )
    )
    assert (batch["label"][:, 16:] == 255).all() and (batch["label"][:, :16] != 255).any()
    assert (batch["image"][:, 16:] == np.round(T.CLIP_MEAN).astype(np.uint8)).all()


def test_deterministic_for_a_seed_and_encoded_inputs():
    source = block_source(encode=True)
    assert _same(_take(_train(source, seed=3), 3), _take(_train(source, seed=3), 3))
    assert not _same(_take(_train(source, seed=3), 3), _take(_train(source, seed=4), 3))


def test_workers_give_the_same_batches():
    source = block_source()
    assert _same(_take(_train(source), 4), _take(_train(source, num_workers=2), 4))


def _ids_source(n):
    """Record i has the constant label i (so a batch names the records it came from)."""
    return [
        {"image": np.full((16, 16, 3), i, np.uint8), "label": np.full((16, 16), i, np.uint8)}
        for i in range(n)
    ]


def _stream(index, count, batch_size, **kw):
    it = _train(
        _ids_source(12),
        num_classes=12,
        unseen=(),
        label_mode="supervised",
        crop_size=8,
        cat_max_ratio=1.0,
        batch_size=batch_size,
        process_index=index,
        process_count=count,
        **kw,
    )
    return it


def test_shards_are_disjoint_and_complete():
    n, count = 12, 3
    seen = [
        {int(b) for batch in _stream(index, count, 2, num_epochs=1) for b in batch["label"][:, 0, 0]}
        for index in range(count)
    ]
    assert all(len(s) == n // count for s in seen)
    assert set().union(*seen) == set(range(n))


def test_processes_assemble_the_single_process_batches():
    """Concatenating the processes' batches in process order gives the one-process batch."""
    single = _take(_stream(0, 1, 6), 5)
    parts = [_take(_stream(index, 3, 2), 5) for index in range(3)]
    for step, batch in enumerate(single):
        for key in batch:
            assembled = np.concatenate([p[step][key] for p in parts])
            np.testing.assert_array_equal(assembled, batch[key])


def test_resume_mid_epoch_gives_the_same_next_batches():
    source = block_source(n=5)
    it = _train(source, batch_size=2)
    _take(it, 3)  # 6 > 5 examples: the state is in the second epoch
    state = it.get_state()
    expected = _take(it, 3)
    restored = _train(source, batch_size=2)
    restored.set_state(state)
    assert _same(_take(restored, 3), expected)
    assert not _same(_take(_train(source, batch_size=2), 3), expected)


def test_orbax_saves_and_restores_the_iterator(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    source = block_source(n=5)
    it = _train(source)
    _take(it, 3)
    manager = ocp.CheckpointManager(tmp_path, item_handlers={"data": grain.PyGrainCheckpointHandler()})
    manager.save(3, args=ocp.args.Composite(data=grain.PyGrainCheckpointSave(it)))
    manager.wait_until_finished()
    expected = _take(it, 2)
    restored = _train(source)
    manager.restore(3, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(restored)))
    assert _same(_take(restored, 2), expected)


def test_bad_records_name_the_record():
    good = block_source(n=2)
    cases = [
        ({"image": b"garbage", "label": good[0]["label"]}, "Cannot decode image record 0"),
        ({"image": good[0]["image"], "label": good[0]["label"][:-8]}, r"record 0: image"),
        (
            {"image": good[0]["image"], "label": np.full_like(good[0]["label"], 30)},
            r"record 0 has ids \[30\]",
        ),
    ]
    for record, message in cases:
        with pytest.raises(ValueError, match=message):
            _take(_train([record, good[1]], batch_size=1, seed=1), 2)


def test_eval_examples_and_padded_batches():
    source = block_source(n=5)
    examples = list(pipeline.eval_iterator(source, short_side=64, shard_index=0, shard_count=1))
    assert len(examples) == 5
    for example, record in zip(examples, source, strict=True):
        assert min(example["image"].shape[:2]) == 64 and example["image"].dtype == np.float32
        np.testing.assert_array_equal(example["label"], record["label"])
    counts = []
    for index in range(2):
        batches = list(
            pipeline.eval_iterator(
                source, short_side=64, batch_size=2, num_classes=K, shard_index=index, shard_count=2
            )
        )
        assert len(batches) == 2  # ceil(3 slots / 2), the same on both processes
        counts.append(int(sum(b["valid"].sum() for b in batches)))
        for batch in batches:
            for label, size, valid in zip(batch["label"], batch["label_size"], batch["valid"], strict=True):
                assert (label[size[0] :] == 255).all() and (label[:, size[1] :] == 255).all()
                assert valid or (label == 255).all()
    assert counts == [2, 3]
    assert len(list(pipeline.eval_iterator(source, max_images=2, shard_index=0, shard_count=1))) == 2


def test_a_local_batch_becomes_a_global_one():
    mesh = Mesh(np.array(jax.devices()[:1]), (sharding.DATA,))
    batch = next(_train(block_source()))
    out = sharding.to_global(batch, mesh)  # what the loop does with each batch
    assert isinstance(out["image"], jax.Array) and out["image"].shape == batch["image"].shape
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])
    assert out["label"].sharding.spec == jax.sharding.PartitionSpec(sharding.DATA)


def test_tfds_source_feeds_the_pipeline(tmp_path):
    fakes.fake_voc(tmp_path / "raw", voc.voc_palette())
    prepare.prepare("voc", tmp_path / "raw", tmp_path / "tfds", allow_partial=True)
    source = pipeline.tfds_source("voc", "train", str(tmp_path / "tfds"))
    batch = next(_train(source, batch_size=4))
    assert batch["image"].shape == (4, 32, 32, 3)
    assert set(np.unique(batch["label"]).tolist()) <= set(range(15)) | {255}
    examples = list(
        pipeline.eval_iterator(
            pipeline.tfds_source("voc", "eval", str(tmp_path / "tfds")),
            short_side=32,
            shard_index=0,
            shard_count=1,
        )
    )
    assert len(examples) == 2 and all(e["valid"] for e in examples)
