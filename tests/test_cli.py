"""`zegot-jax segment`: outputs per image, the run's own classes, failures reported and skipped."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from inference_fixtures import random_image, save_run, smoke_config

from zegot_jax import cli, inference
from zegot_jax.data import class_names


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip):
    workdir = str(tmp_path_factory.mktemp("run"))
    save_run(workdir, smoke_config(), tiny_clip)
    return workdir, inference.Segmenter.from_run(workdir)


@pytest.fixture
def loaded(run, monkeypatch):
    """The CLI gets the module's already loaded segmenter (loading is tested in test_inference)."""
    workdir, segmenter = run
    calls = []

    def from_run(path, *, clip_weights=None):
        calls.append((str(path), clip_weights))
        return segmenter

    monkeypatch.setattr(inference.Segmenter, "from_run", staticmethod(from_run))
    return workdir, calls


def _images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = [tmp_path / "a" / "street.png", tmp_path / "b" / "street.jpg"]
    PIL.Image.fromarray(random_image(50, 70)).save(good[0])
    PIL.Image.fromarray(random_image(50, 70, seed=1)).save(good[1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    return good, broken, tmp_path / "missing.png"


def test_segment_writes_outputs_and_reports_failures(loaded, tmp_path, capsys):
    workdir, calls = loaded
    good, broken, missing = _images(tmp_path)
    out = tmp_path / "out"
    code = cli.main(
        [
            "segment",
            str(good[0]),
            str(broken),
            str(good[1]),
            str(missing),
            "--classes",
            "cat, dog,grass",
            "--run",
            workdir,
            "--out",
            str(out),
            "--clip-weights",
            "random:tiny",
        ]
    )
    assert code == 1
    assert calls == [(workdir, "random:tiny")]
    err = capsys.readouterr().err
    assert "Segmented 2 of 4 images" in err
    assert f"FAILED {broken}" in err and f"FAILED {missing}" in err
    for stem, image in (("street", good[0]), ("street-1", good[1])):  # same stem made unique
        summary = json.loads((out / f"{stem}.json").read_text())
        assert summary["image"] == str(image)
        assert summary["classes"] == ["cat", "dog", "grass"]
        size = summary["size"]
        assert size == [50, 70]
        assert abs(sum(summary["pixel_share"].values()) - 1) < 1e-4
        assert 0 <= summary["ot_marginal_error"] < 1e-2  # the OT converged
        labels = np.asarray(PIL.Image.open(out / summary["outputs"]["labels"]))
        assert labels.shape == tuple(size) and labels.max() < 3
        shares = np.bincount(labels.ravel(), minlength=3) / labels.size
        np.testing.assert_allclose(shares, list(summary["pixel_share"].values()), atol=1e-5)
        for key in ("overlay", "prompts"):
            assert PIL.Image.open(out / summary["outputs"][key]).size[0] > 100
    assert not (out / "broken.json").exists()


def test_segment_defaults_to_the_runs_classes(loaded, tmp_path):
    workdir, _ = loaded
    good, _, _ = _images(tmp_path)
    assert (
        cli.main(
            [
                "segment",
                str(good[1]),
                "--run",
                workdir,
                "--out",
                str(tmp_path / "o"),
                "--grid-classes",
                "cat,dog",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "o" / "street.json").read_text())
    assert summary["classes"] == list(class_names.VOC20)


@pytest.mark.parametrize(
    "classes, message",
    [
        ("", "empty"),
        (" , ", "empty"),
        ("cat,,dog", "empty name"),
        ("cat,dog,Cat", "Duplicate"),
    ],
)
def test_bad_vocabulary_fails_before_loading(classes, message, tmp_path, capsys):
    code = cli.main(
        ["segment", "x.png", "--classes", classes, "--run", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_grid_classes_must_be_in_vocabulary(loaded, tmp_path, capsys):
    workdir, _ = loaded
    code = cli.main(
        [
            "segment",
            "x.png",
            "--classes",
            "cat,dog",
            "--grid-classes",
            "sky",
            "--run",
            workdir,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "not in the vocabulary" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["script", "module"])
def test_installed_script_reports_a_missing_run(tmp_path, how):
    script = Path(sys.executable).parent / "zegot-jax"
    assert script.exists(), "the console script is not installed: pip install -e ."
    command = [str(script)] if how == "script" else [sys.executable, "-m", "zegot_jax.cli"]
    result = subprocess.run(
        [*command, "segment", "x.png", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_output_names_never_overwrite_another_input(loaded, tmp_path):
    workdir, _ = loaded
    (tmp_path / "img2").mkdir()
    images = [tmp_path / "a.png", tmp_path / "img2" / "a.png", tmp_path / "a-1.png"]
    for seed, path in enumerate(images):
        PIL.Image.fromarray(random_image(20, 30, seed=seed)).save(path)
    out = tmp_path / "out"
    assert (
        cli.main(["segment", *map(str, images), "--classes", "cat,dog", "--run", workdir, "--out", str(out)])
        == 0
    )
    written = {json.loads(p.read_text())["image"] for p in out.glob("*.json")}
    assert written == {str(p) for p in images}  # three inputs, three output sets
    assert cli._output_stems(["x/A.png", "a.jpg", "a-1.png"]) == ["A", "a-2", "a-1"]


def test_a_vocabulary_over_max_classes_stops_at_once(loaded, tmp_path, capsys):
    workdir, _ = loaded
    many = ",".join(f"class {i}" for i in range(600))  # the smoke run allows 512
    code = cli.main(["segment", "x.png", "--classes", many, "--run", workdir, "--out", str(tmp_path / "o")])
    assert code == 2 and "exceed model.max_classes=512" in capsys.readouterr().err


def test_an_unwritable_out_stops_at_once(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = cli.main(["segment", "x.png", "--run", str(tmp_path), "--out", str(tmp_path / "file")])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_a_too_long_class_name_stops_at_once(loaded, tmp_path, capsys):
    workdir, _ = loaded
    good, _, _ = _images(tmp_path)
    long_name = "tomato " * 70  # 490 characters
    code = cli.main(
        [
            "segment",
            *map(str, good),
            "--classes",
            f"cat,{long_name}",
            "--run",
            workdir,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("needs") == 1 and "clip.text_context_length" in err
    assert len(err) < 400 and not (tmp_path / "o").exists()


def test_an_image_out_of_memory_fails_alone(loaded, tmp_path, capsys, monkeypatch):
    workdir, _ = loaded
    good, _, _ = _images(tmp_path)
    real = cli.segment_one

    def first_runs_out(segmenter, image, *args):
        if image == str(good[0]):
            raise MemoryError()
        return real(segmenter, image, *args)

    monkeypatch.setattr(cli, "segment_one", first_runs_out)
    code = cli.main(
        ["segment", *map(str, good), "--classes", "cat,dog", "--run", workdir, "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Segmented 1 of 2" in err
    assert f"FAILED {good[0]}: MemoryError: out of memory" in err
    assert (tmp_path / "o" / "street-1.json").exists()
