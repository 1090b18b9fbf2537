"""The run-storage tests share the run's GCS server (tests/gcs_server.py)."""

from gcs_server import gcs  # noqa: F401 (the session fixture)
