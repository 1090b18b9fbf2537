"""The four TFDS builders on tiny fake copies in the real on-disk formats."""

import io
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from zegot_jax.data import class_names, pipeline, prepare
from zegot_jax.data.builders import BUILDERS, base, coco_stuff, voc

from . import fakes

FAKES = {
    "voc": lambda root: fakes.fake_voc(root, voc.voc_palette()),
    "context": fakes.fake_context,
    "coco_stuff": fakes.fake_coco_stuff,
    "ade20k": fakes.fake_ade20k_zip,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds all four fake datasets once (partial on purpose); returns data_dir, expectations."""
    tmp = tmp_path_factory.mktemp("built")
    expected = {}
    for name, make in FAKES.items():
        expected[name] = make(tmp / name)
        prepare.prepare(name, tmp / name, tmp / "tfds", allow_partial=True, num_threads=2)
    return tmp, expected


def _read(source):
    out = {}
    for i in range(len(source)):
        record = source[i]
        stem = record["file_name"].decode().rsplit(".", 1)[0]
        label = np.asarray(PIL.Image.open(io.BytesIO(record["label"])))
        out[stem] = (record["image"], label)
    return out


@pytest.mark.parametrize("dataset", sorted(FAKES))
def test_build_and_read_back(built, dataset):
    tmp, expected = built
    num_classes = len(class_names.DATASETS[dataset][0])
    for split, want in expected[dataset].items():
        got = _read(pipeline.tfds_source(dataset, split, str(tmp / "tfds")))
        assert sorted(got) == sorted(want), split
        for key, (image_bytes, label) in got.items():
            np.testing.assert_array_equal(label, want[key], err_msg=f"{dataset} {key}")
            image = PIL.Image.open(io.BytesIO(image_bytes))
            assert image.format == "JPEG" and image.size[::-1] == label.shape
            assert set(np.unique(label)) <= set(range(num_classes)) | {255}


def test_voc_splits_and_label_priority(built):
    tmp, expected = built
    # train = (SBD train + SBD val + VOC train) - VOC val; v1 is in SBD val but is a VOC val image.
    assert sorted(expected["voc"]["train"]) == ["a0", "a1", "s0", "s1"]
    got = _read(pipeline.tfds_source("voc", "train", str(tmp / "tfds")))
    # a1 has an all-background SBD .mat; its VOC PNG must win (not all-ignore).
    assert (got["a1"][1] != 255).any()
    assert 255 in got["a0"][1] and 0 in got["s0"][1]  # background -> 255; id 1 -> 0


def test_metadata_and_eval_alias(built):
    tmp, _ = built
    builder = tfds.builder("zegot_context59", data_dir=str(tmp / "tfds"))
    assert builder.info.metadata["partial"] is True
    assert tuple(builder.info.metadata["class_names"]) == class_names.CONTEXT59
    assert len(pipeline.tfds_source("context", "eval", str(tmp / "tfds"))) == 2


def _assert_not_built(data_dir: Path, dataset: str) -> None:
    name = BUILDERS[dataset].name
    assert not (data_dir / name / "1.0.0").exists()
    with pytest.raises(Exception):  # noqa: B017 (TFDS raises its own not-found error types)
        pipeline.tfds_source(dataset, "train", str(data_dir))


def test_official_counts_enforced_and_missing_listed(tmp_path):
    fakes.fake_voc(tmp_path / "raw", voc.voc_palette())
    (tmp_path / "raw/VOCdevkit/VOC2012/JPEGImages/s1.jpg").unlink()
    with pytest.raises(ValueError, match=r"(?s)official count is 10582.*s1\.jpg.*allow_partial"):
        prepare.prepare("voc", tmp_path / "raw", tmp_path / "tfds")
    _assert_not_built(tmp_path / "tfds", "voc")


def test_missing_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare.prepare("coco_stuff", tmp_path / "nowhere", tmp_path / "tfds")
    fakes.fake_coco_stuff(tmp_path / "raw")
    for path in sorted((tmp_path / "raw" / "images" / "train2017").iterdir()):
        path.unlink()
    (tmp_path / "raw" / "images" / "train2017").rmdir()
    with pytest.raises(FileNotFoundError, match=r"images/train2017 \(COCO images\)"):
        prepare.prepare("coco_stuff", tmp_path / "raw", tmp_path / "tfds", allow_partial=True)
    _assert_not_built(tmp_path / "tfds", "coco_stuff")


@pytest.mark.parametrize(
    "damage,message",
    [
        ("corrupt_image", r"Corrupt or unreadable image .*000000000001\.jpg"),
        ("label_size", r"Label of .*000000000001\.jpg has size \(5, 7\)"),
        ("id_out_of_range", r"Label .*000000000001\.png has ids out of range: \[200\]"),
    ],
)
def test_bad_files_are_named_and_nothing_complete_is_left(tmp_path, damage, message):
    raw = tmp_path / "raw"
    fakes.fake_coco_stuff(raw)
    image, label = raw / "images/train2017/000000000001.jpg", raw / "annotations/train2017/000000000001.png"
    if damage == "corrupt_image":
        image.write_bytes(image.read_bytes()[:200])
    elif damage == "label_size":
        fakes.write_grey_png(label, np.zeros((7, 5), np.uint8))
    else:
        ids = np.asarray(PIL.Image.open(label)).copy()
        ids[0, 0] = 200
        fakes.write_grey_png(label, ids)
    with pytest.raises(ValueError, match=message):
        prepare.prepare("coco_stuff", raw, tmp_path / "tfds", allow_partial=True, num_threads=2)
    _assert_not_built(tmp_path / "tfds", "coco_stuff")
    fakes.fake_coco_stuff(raw)  # repaired: the next build succeeds over the failed one's leftovers
    builder = prepare.prepare("coco_stuff", raw, tmp_path / "tfds", allow_partial=True)
    assert builder.info.splits["train"].num_examples == 3


def test_context_from_mmseg_converted_pngs(tmp_path):
    voc2010 = tmp_path / "raw/VOCdevkit/VOC2010"
    rng = np.random.default_rng(5)
    expected = {}
    for i, split in enumerate(["train", "train", "val"]):
        stem = f"2010_00000{i}"
        fakes.write_jpeg(voc2010 / "JPEGImages" / f"{stem}.jpg", (12, 16), i)
        raw = rng.integers(0, 60, (12, 16)).astype(np.uint8)
        fakes.write_grey_png(voc2010 / "SegmentationClassContext" / f"{stem}.png", raw)
        expected[stem] = np.where(raw == 0, 255, raw - 1)
        lists = voc2010 / "ImageSets/SegmentationContext"
        lists.mkdir(parents=True, exist_ok=True)
        with open(lists / f"{split}.txt", "a") as f:
            f.write(stem + "\n")
    prepare.prepare("context", tmp_path / "raw", tmp_path / "tfds", allow_partial=True)
    got = _read(pipeline.tfds_source("context", "train", str(tmp_path / "tfds")))
    got.update(_read(pipeline.tfds_source("context", "validation", str(tmp_path / "tfds"))))
    assert sorted(got) == sorted(expected)
    for stem, want in expected.items():
        np.testing.assert_array_equal(got[stem][1], want)


def test_voc_rgb_labels_and_coco_train_id_pngs(tmp_path):
    palette = voc.voc_palette()
    ids = np.array([[0, 1, 20], [255, 15, 3]], np.uint8)
    np.testing.assert_array_equal(voc.rgb_to_index(palette[ids], "x.png"), ids)
    with pytest.raises(ValueError, match="outside the VOC palette"):
        voc.rgb_to_index(np.full((2, 2, 3), 7, np.uint8), "x.png")
    assert coco_stuff.RAW_LUT[[0, 11, 12, 90, 91, 181, 255]].tolist() == [0, 255, 11, 255, 80, 170, 255]
    path = tmp_path / "000000000009_labelTrainIds.png"
    fakes.write_grey_png(path, np.array([[0, 170, 255]], np.uint8))
    builder = BUILDERS["coco_stuff"](data_dir=str(tmp_path / "tfds"))
    item = base.Item("9", tmp_path / "000000000009.jpg", path)
    assert builder._train_ids(item, (1, 3)).tolist() == [[0, 170, 255]]


def test_tar_archive_is_extracted(tmp_path):
    fakes.write_jpeg(tmp_path / "tree/VOCdevkit/VOC2010/JPEGImages/a.jpg", (8, 8), 0)
    with tarfile.open(tmp_path / "VOCtrainval_03-May-2010.tar", "w") as tf:
        tf.add(tmp_path / "tree/VOCdevkit", arcname="VOCdevkit")
    base.extract_missing(tmp_path, BUILDERS["context"].ARCHIVES)
    assert (tmp_path / "VOCdevkit/VOC2010/JPEGImages/a.jpg").is_file()
    assert not list(tmp_path.glob(".extracting-*"))


def test_prepare_cli(tmp_path, capsys):
    fakes.fake_ade20k_zip(tmp_path / "raw")
    assert prepare.main(["--dataset=ade20k", "--show_instructions"]) == 0
    assert "ADEChallengeData2016.zip" in capsys.readouterr().out
    argv = [
        "--dataset=ade20k",
        f"--manual_dir={tmp_path / 'raw'}",
        f"--data_dir={tmp_path / 'tfds'}",
        "--allow_partial",
    ]
    assert prepare.main(argv) == 0
    assert "zegot_ade150 written" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="1"):
        prepare.main(argv[:-1] + ["--overwrite"])
    assert "official count is 2000" in capsys.readouterr().err
    assert len(pipeline.tfds_source("ade20k", "validation", str(tmp_path / "tfds"))) == 3
    fakes.write_jpeg(tmp_path / "raw/ADEChallengeData2016/images/validation/extra.jpg", (24, 32), 9)
    fakes.write_grey_png(
        tmp_path / "raw/ADEChallengeData2016/annotations/validation/extra.png", np.ones((24, 32), np.uint8)
    )
    assert prepare.main(argv + ["--overwrite"]) == 0  # the failed rebuild kept the old copy
    assert len(pipeline.tfds_source("ade20k", "validation", str(tmp_path / "tfds"))) == 4


def test_strict_prepare_over_a_partial_copy_and_killed_builds(tmp_path, capsys):
    fakes.fake_ade20k_zip(tmp_path / "raw")
    argv = ["--dataset=ade20k", f"--manual_dir={tmp_path / 'raw'}", f"--data_dir={tmp_path / 'tfds'}"]
    assert prepare.main(argv + ["--allow_partial"]) == 0
    assert "written to" in capsys.readouterr().out
    killed = tmp_path / "tfds" / "zegot_ade150" / "incomplete.ABC123_1.0.0"
    killed.mkdir()
    with pytest.raises(SystemExit, match="1"):
        prepare.main(argv)
    captured = capsys.readouterr()
    assert "already holds a partial zegot_ade150" in captured.err and "--overwrite" in captured.err
    assert "written to" not in captured.out
    assert f"removing {killed}" in captured.err and not killed.exists()
    assert prepare.main(argv + ["--allow_partial"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_unwritable_data_dir_is_one_line(tmp_path, capsys):
    fakes.fake_ade20k_zip(tmp_path / "raw")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="1"):
        prepare.main(
            ["--dataset=ade20k", f"--manual_dir={tmp_path / 'raw'}", f"--data_dir={tmp_path / 'file'}"]
        )
    assert capsys.readouterr().err.startswith("error: --data_dir")
