"""The tests' GCS server: one per run, reachable from subprocesses through the variables alone."""

import os
import subprocess
import sys

import gcs_server


def test_the_run_shares_one_server_and_its_variables_are_set(gcs):
    assert gcs_server.ensure() == gcs and gcs_server.answers(gcs.url)
    assert gcs.url.startswith("http://127.0.0.1:")
    for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        assert os.environ[name] == gcs.url
    assert gcs.bucket("zegot-server-tests") == gcs.bucket("zegot-server-tests") == "gs://zegot-server-tests"


def test_a_subprocess_reaches_the_server_by_the_variables_alone(gcs):
    url = f"{gcs.bucket('zegot-server-tests')}/from-child.txt"
    code = (
        "import sys; from etils import epath; p = epath.Path(sys.argv[1]); p.write_text('hi'); "
        "print(p.read_text(), end='')"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60
    )  # inherits os.environ, where the fixture put the variables
    assert child.returncode == 0, child.stderr
    assert child.stdout == "hi" and not os.path.exists("gs:")
