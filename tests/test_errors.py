"""The one-line error convention of the entry points."""

import os

import pytest

from zegot_jax import errors


def test_a_missing_optional_package_is_a_user_error(capsys, monkeypatch):
    monkeypatch.delenv("ZEGOT_DEBUG", raising=False)
    with pytest.raises(SystemExit, match="1"), errors.user_errors():
        raise errors.MissingDependency("Reading m.pt needs torch: pip install torch.")
    assert capsys.readouterr().err == "error: Reading m.pt needs torch: pip install torch.\n"


def test_writable_dir_checks_create_nothing(tmp_path):
    errors.check_writable_dir(str(tmp_path / "new" / "deeper"), "--out")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--workdir .* is a file"):
        errors.check_writable_dir(str(tmp_path / "file"), "--workdir")
    with pytest.raises(ValueError, match="cannot be created: .* is a file"):
        errors.check_writable_dir(str(tmp_path / "file" / "sub"), "--out")


def test_an_unwritable_parent(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: path != str(tmp_path))  # root writes all
    with pytest.raises(ValueError, match=f"--out .* is not writable \\({tmp_path} does not"):
        errors.check_writable_dir(str(tmp_path / "out"), "--out")


@pytest.mark.parametrize(
    "body, where",
    [
        ("def get_config(:\n    pass\n", "line 1: SyntaxError: invalid syntax"),
        (
            "import ml_collections\n\n\ndef get_config(arg=None):\n    return 1 / 0\n",
            "line 5: ZeroDivisionError: division by zero",
        ),
        ("raise RuntimeError('boom')\n", "line 1: RuntimeError: boom"),
        (
            "import ml_collections\n\n\ndef get_config(arg=None):\n    return ml_collections.ConfigDict("
            ").missing\n",
            "line 5: AttributeError",
        ),
    ],
)
def test_a_failing_config_file_is_one_line_with_its_line(tmp_path, capsys, body, where):
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    (tmp_path / "cfg.py").write_text(body)
    with pytest.raises(SystemExit) as exit_info:
        errors.parse_flags(["train.py", f"--config={tmp_path / 'cfg.py'}"], values)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot load {tmp_path / 'cfg.py'}, {where}")
    assert len(err.strip().splitlines()) == 1
