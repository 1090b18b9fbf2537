"""Run storage on local folders and on a real GCS server (fake-gcs-server on 127.0.0.1)."""

import os
import stat
import sys
import threading
import time

import pytest

from zegot_jax import storage
from zegot_jax.errors import MissingDependency
from zegot_jax.runs import gcs_lock


@pytest.fixture
def gs(gcs, request):
    """A fresh gs:// folder for each test (one bucket for the module)."""
    return f"{gcs.bucket('zegot-storage-tests')}/{request.node.name.replace('[', '-').rstrip(']')}"


def _blob(url: str):
    from google.cloud import storage as gcs_client

    bucket, name = url.removeprefix("gs://").split("/", 1)
    return gcs_client.Client(project=None).bucket(bucket).blob(name)


# Paths.


def test_path_takes_local_paths_and_gs_urls():
    assert str(storage.path("~/runs/a")) == os.path.join(os.path.expanduser("~"), "runs/a")
    assert str(storage.path("runs/a")) == "runs/a"
    assert str(storage.path("gs://bkt/runs/a")) == "gs://bkt/runs/a"
    assert str(storage.path("gs://bkt/runs") / "a") == "gs://bkt/runs/a"
    assert storage.is_remote("gs://bkt/a") and not storage.is_remote("/tmp/a")
    assert storage.bucket("gs://bkt/a/b") == "bkt" and storage.bucket("/tmp/a") is None


@pytest.mark.parametrize(
    "url",
    [
        "s3://bkt/a",
        "http://host/a",
        "https://host/a",
        "file:///tmp/a",
        "gcs://bkt/a",
        "GS://bkt/a",
        "hf://org/a",
        "az://c/a",
    ],
)
def test_other_schemes_are_refused_with_the_ones_that_work(url):
    with pytest.raises(ValueError, match=r"not supported; use a local path or gs://BUCKET/PATH\.$") as e:
        storage.path(url)
    assert "\n" not in str(e.value) and url in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("gs:/bkt/a", "is not a gs:// URL"),
        ("gs:bkt/a", "is not a gs:// URL"),
        ("gs://", "names no bucket"),
        ("gs:///a", "names no bucket"),
        ("/gs/bkt/a", "reads a local path under /gs/"),
    ],
)
def test_paths_that_would_land_in_the_wrong_place_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        storage.path(text)


def test_a_gs_path_without_the_gcs_packages_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"needs gcsfs: pip install 'zegot-jax\[gcs\]'$"):
        storage.require_gcs("gs://bkt/run")
    with pytest.raises(MissingDependency, match="zegot-jax"):
        storage.read_text("gs://bkt/run/metrics.jsonl")
    storage.require_gcs("/tmp/run")  # local paths need nothing


# Local writes.


def test_local_write_replaces_whole_with_the_umask_mode(tmp_path):
    target = tmp_path / "run" / "results.md"
    storage.write_text(target, "old")
    storage.write_text(target, "new")
    assert storage.read_text(target) == "new"
    assert os.listdir(target.parent) == ["results.md"]  # no temporary file left
    umask = os.umask(0o22)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask


def test_a_failed_local_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    storage.write_text(target, "old\n")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        storage.write_text(target, "new\n")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_link_inside_the_run_is_refused_and_named(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    outside.mkdir()
    (run / "tensorboard").symlink_to(outside)
    with pytest.raises(ValueError, match=f"{run / 'tensorboard'} is a symbolic link inside the run"):
        storage.write_text(run / "tensorboard" / "events", "x", root=run)
    assert os.listdir(outside) == []
    storage.write_text(run / "tensorboard" / "events", "x")  # without a root nothing is checked


def test_the_run_folder_itself_may_be_a_link_and_a_linked_file_is_replaced_not_followed(tmp_path):
    disk, victim = tmp_path / "disk", tmp_path / "victim.txt"
    disk.mkdir()
    victim.write_text("keep")
    (tmp_path / "run").symlink_to(disk)
    (disk / "results.md").symlink_to(victim)
    storage.write_text(tmp_path / "run" / "results.md", "new", root=tmp_path / "run")
    assert victim.read_text() == "keep"
    assert (disk / "results.md").read_text() == "new" and not (disk / "results.md").is_symlink()


def test_local_trees_move_by_rename_copy_and_remove(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "5"
    storage.write_text(step / "state" / "a", "1")
    storage.write_text(step / "b", "2")
    inode = os.stat(step).st_ino
    copied = storage.copy_tree(step, tmp_path / "copy")
    assert copied == ["b", "state/a"] and storage.read_text(tmp_path / "copy" / "state" / "a") == "1"
    aside = tmp_path / "run" / "corrupt_checkpoints" / "5"
    storage.move_tree(step, aside, root=tmp_path / "run")
    assert os.stat(aside).st_ino == inode and not step.exists()
    assert storage.listdir(tmp_path / "run") == ["checkpoints", "corrupt_checkpoints"]
    assert storage.listdir(tmp_path / "nothing") == []
    with pytest.raises(FileExistsError):
        storage.copy_tree(aside, tmp_path / "copy")
    storage.remove_tree(tmp_path / "copy")
    storage.remove_tree(tmp_path / "copy")  # absent: nothing to do
    assert not storage.exists(tmp_path / "copy")


def test_remove_tree_removes_a_link_not_its_target(tmp_path):
    target = tmp_path / "target"
    storage.write_text(target / "f", "keep")
    (tmp_path / "link").symlink_to(target)
    storage.remove_tree(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link") and (target / "f").read_text() == "keep"


def test_moving_into_a_linked_folder_inside_the_run_is_refused(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    storage.write_text(run / "checkpoints" / "5" / "a", "1")
    outside.mkdir()
    (run / "corrupt_checkpoints").symlink_to(outside)
    with pytest.raises(ValueError, match="corrupt_checkpoints is a symbolic link inside the run"):
        storage.move_tree(run / "checkpoints" / "5", run / "corrupt_checkpoints" / "5", root=run)
    assert (run / "checkpoints" / "5" / "a").exists() and os.listdir(outside) == []


# gs://.


def test_gs_round_trip(gs):
    storage.write_text(f"{gs}/metrics.jsonl", '{"step": 1}\n')
    storage.write_text(f"{gs}/metrics.jsonl", '{"step": 1}\n{"step": 2}\n')  # replaced whole
    storage.write_bytes(f"{gs}/tensorboard/events.out", b"\x00\x01")
    assert storage.read_text(f"{gs}/metrics.jsonl") == '{"step": 1}\n{"step": 2}\n'
    assert storage.read_bytes(f"{gs}/tensorboard/events.out") == b"\x00\x01"
    assert storage.exists(f"{gs}/metrics.jsonl") and storage.exists(f"{gs}/tensorboard")
    assert not storage.exists(f"{gs}/results.md")
    assert storage.listdir(gs) == ["metrics.jsonl", "tensorboard"]
    assert storage.listdir(f"{gs}/nothing") == []
    assert not os.path.exists("gs:")  # nothing went through pathlib to a local folder


def test_gs_listings_see_what_other_clients_wrote(gs):
    """gcsfs caches listings; orbax (tensorstore), the lock and other hosts write behind it."""
    storage.write_text(f"{gs}/a", "1")
    assert storage.listdir(gs) == ["a"] and not storage.exists(f"{gs}/b")
    _blob(f"{gs}/b").upload_from_string("2")
    assert storage.listdir(gs) == ["a", "b"] and storage.exists(f"{gs}/b")
    _blob(f"{gs}/a").delete()
    assert storage.listdir(gs) == ["b"] and not storage.exists(f"{gs}/a")


def test_a_missing_bucket_is_named_in_one_line(gcs):
    url = "gs://zegot-no-such-bucket/run"
    for call in (
        lambda: storage.write_text(f"{url}/results.md", "x"),
        lambda: storage.read_text(f"{url}/results.md"),
        lambda: storage.listdir(url),
    ):
        with pytest.raises(FileNotFoundError, match="bucket zegot-no-such-bucket does not exist") as e:
            call()
        assert "\n" not in str(e.value) and "gcloud storage buckets create" in str(e.value)
    assert not storage.exists(url)


def test_a_missing_object_stays_a_plain_file_not_found(gs):
    with pytest.raises(FileNotFoundError) as e:
        storage.read_text(f"{gs}/absent.json")
    assert "bucket" not in str(e.value)


def test_gs_trees_copy_move_and_remove(gs):
    step = f"{gs}/checkpoints/5"
    for name in ("state/a", "state/b", "_CHECKPOINT_METADATA"):
        storage.write_text(f"{step}/{name}", name)
    assert storage.copy_tree(step, f"{gs}/copy") == ["_CHECKPOINT_METADATA", "state/a", "state/b"]
    storage.move_tree(step, f"{gs}/corrupt_checkpoints/5")
    assert storage.read_text(f"{gs}/corrupt_checkpoints/5/state/b") == "state/b"
    assert storage.listdir(f"{gs}/corrupt_checkpoints/5") == ["_CHECKPOINT_METADATA", "state"]
    assert not storage.exists(step) and storage.listdir(f"{gs}/checkpoints") == []
    with pytest.raises(FileExistsError):
        storage.move_tree(f"{gs}/copy", f"{gs}/corrupt_checkpoints/5")
    storage.remove_tree(f"{gs}/copy")
    storage.remove_tree(f"{gs}/copy")
    assert storage.listdir(gs) == ["corrupt_checkpoints"]  # a folder is only its objects


def test_a_failed_gs_move_deletes_nothing(gs, monkeypatch):
    step = f"{gs}/checkpoints/7"
    for name in ("a", "b", "c"):
        storage.write_text(f"{step}/{name}", name)
    fs = storage._gcsfs()
    copy, calls = fs.copy, []

    def copy_twice_then_fail(src, dst, **kwargs):
        calls.append(src)
        if len(calls) == 3:
            raise OSError("connection reset")
        return copy(src, dst, **kwargs)

    monkeypatch.setattr(fs, "copy", copy_twice_then_fail)  # fsspec's sync methods are per instance
    with pytest.raises(OSError, match="connection reset"):
        storage.move_tree(step, f"{gs}/corrupt_checkpoints/7")
    monkeypatch.undo()
    assert storage.listdir(step) == ["a", "b", "c"]


def _errors():
    from gcsfs.retry import HttpError
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    return {
        "credentials": [
            HttpError({"code": 401, "message": "Invalid Credentials"}),
            exceptions.Unauthorized("Anonymous caller does not have access"),
            DefaultCredentialsError("Your default credentials were not found."),
            RefreshError("invalid_grant"),
        ],
        "permission": [
            OSError("Forbidden: b/bkt/o\nsa@x does not have storage.objects.create"),
            exceptions.Forbidden("sa@x does not have storage.objects.get access"),
            HttpError({"code": 403, "message": "denied"}),
        ],
    }


@pytest.mark.parametrize(
    "kind, index", [("credentials", i) for i in range(4)] + [("permission", i) for i in range(3)]
)
def test_credential_and_permission_failures_read_as_one_line_naming_the_bucket(kind, index):
    """The clients' own credential and permission errors read as one line.

    The fake server checks no credentials or permissions: these are the clients' own errors
    (gcsfs's, google-cloud-storage's, google-auth's) as they raise them against real GCS.
    """
    error = _errors()[kind][index]
    explained = storage.explain(error, "gs://zegot-bkt/run/metrics.jsonl")
    assert isinstance(explained, ValueError) and "\n" not in str(explained)
    assert "bucket zegot-bkt" in str(explained)
    assert (
        "gcloud auth application-default login" if kind == "credentials" else "get-iam-policy gs://zegot-bkt"
    ) in str(explained)


# The gs:// lock.


def test_a_second_training_is_refused_with_the_holder_named(gs):
    held = gcs_lock.acquire(gs)
    try:
        with pytest.raises(
            ValueError,
            match=rf"in use by another training \(pid {os.getpid()} on host "
            rf".*, started .*, heartbeat \d+ s ago\)",
        ):
            gcs_lock.acquire(gs)
    finally:
        gcs_lock.release(held)
    assert not storage.exists(f"{gs}/{gcs_lock.LOCK_NAME}")
    gcs_lock.release(gcs_lock.acquire(gs))  # free again


def test_of_simultaneous_starts_exactly_one_takes_the_lock(gs):
    results, barrier = [], threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            results.append(gcs_lock.acquire(gs))
        except ValueError as e:
            results.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results if isinstance(r, gcs_lock.Held)]
    assert len(held) == 1 and sum(isinstance(r, ValueError) for r in results) == 3
    gcs_lock.release(held[0])


def test_the_heartbeat_rewrites_the_lock(gs):
    held = gcs_lock.acquire(gs, heartbeat_s=0.05)
    try:
        first = held.generation
        deadline = time.monotonic() + 5
        while (
            _blob(f"{gs}/{gcs_lock.LOCK_NAME}").exists() and held._beats < 2 and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert held._beats >= 2 and held.generation != first and held.lost is None
    finally:
        held.release()
    time.sleep(0.15)  # three beats' time: a heartbeat left running would write the lock again
    assert not held._thread.is_alive() and not storage.exists(f"{gs}/{gcs_lock.LOCK_NAME}")


def test_a_stale_lock_is_taken_over_with_a_note_and_its_old_holder_learns_it(gs, capsys):
    old = gcs_lock.acquire(gs, heartbeat_s=3600)
    time.sleep(0.05)  # the object's `updated` time has microseconds
    new = gcs_lock.acquire(gs, stale_after_s=0.01)
    try:
        assert "note: taking over the lock of" in capsys.readouterr().err
        with pytest.raises(ValueError, match="Lost the lock of .* to another training"):
            old.renew()
        with pytest.raises(ValueError, match="Lost the lock"):
            old.check()
        old.release()  # must not delete the new holder's lock
        assert storage.exists(f"{gs}/{gcs_lock.LOCK_NAME}")
        new.renew()
    finally:
        new.release()


def test_a_holder_that_missed_the_takeover_releases_without_deleting_the_new_lock(gs):
    old = gcs_lock.acquire(gs, heartbeat_s=3600)
    time.sleep(0.05)
    new = gcs_lock.acquire(gs, stale_after_s=0.01)
    old.release()  # never renewed since: it does not know
    try:
        assert storage.exists(f"{gs}/{gcs_lock.LOCK_NAME}")
        new.renew()
    finally:
        new.release()
    assert not storage.exists(f"{gs}/{gcs_lock.LOCK_NAME}")


def test_a_renewal_whose_retried_write_had_landed_keeps_the_lock(gs, monkeypatch):
    from google.api_core import exceptions

    held = gcs_lock.acquire(gs, heartbeat_s=3600)
    upload = held._blob.upload_from_string

    def lands_then_412(*args, **kwargs):
        upload(*args, **kwargs)  # the first attempt reached the bucket; its reply was lost
        raise exceptions.PreconditionFailed("the retry's precondition no longer holds")

    monkeypatch.setattr(held._blob, "upload_from_string", lands_then_412)
    held.renew()
    monkeypatch.undo()
    assert held.lost is None and held.generation == _blob_generation(gs)
    held.renew()  # and the next one writes over that generation
    held.release()
    assert not storage.exists(f"{gs}/{gcs_lock.LOCK_NAME}")


def _blob_generation(gs):
    blob = _blob(f"{gs}/{gcs_lock.LOCK_NAME}")
    blob.reload()
    return blob.generation


def test_hold_locks_only_when_enabled_and_a_missing_bucket_is_named(gcs):
    with gcs_lock.hold("gs://zegot-storage-tests/hold", enabled=False) as held:
        assert held is None and not storage.exists("gs://zegot-storage-tests/hold/train.lock")
    with gcs_lock.hold("gs://zegot-storage-tests/hold") as held:
        assert storage.exists("gs://zegot-storage-tests/hold/train.lock")
    assert not storage.exists("gs://zegot-storage-tests/hold/train.lock")
    with pytest.raises(FileNotFoundError, match="bucket zegot-no-such-bucket does not exist"):
        gcs_lock.acquire("gs://zegot-no-such-bucket/run")
