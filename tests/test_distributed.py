"""`distributed.start`: which launches join a job (in process, `jax.distributed.initialize` faked).

The explicit variables' path also runs for real in `tests/train/test_loop.py` (two processes).
"""

import jax
import pytest

from zegot_jax import distributed
from zegot_jax.configs import common

EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri",
    "KUBERNETES_SERVICE_HOST",
    "TPU_WORKER_HOSTNAMES",
)


@pytest.fixture
def calls(monkeypatch):
    """The arguments of each `jax.distributed.initialize` call (none is made for real)."""
    made = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: made.append(kw))
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return made


def test_the_config_default_is_the_documented_bound():
    defaults = common.get_config().distributed
    assert defaults.initialize == "auto"
    assert defaults.heartbeat_timeout_s == distributed.HEARTBEAT_TIMEOUT_S == 60  # README


def test_one_host_never_initializes(calls):
    assert distributed.detected_cluster() is None
    assert distributed.start("auto") == "one process" and calls == []


def test_explicit_variables_initialize_with_the_heartbeat(calls, monkeypatch):
    for name, value in EXPLICIT.items():
        monkeypatch.setenv(name, value)
    assert distributed.start("auto", heartbeat_timeout_s=7) == "explicit"
    assert calls == [
        {
            "coordinator_address": "localhost:1234",
            "num_processes": 2,
            "process_id": 1,
            "heartbeat_timeout_seconds": 7,
        }
    ]
    assert distributed.start("on") == "explicit" and len(calls) == 2


def test_off_never_initializes(calls, monkeypatch):
    for name, value in EXPLICIT.items():
        monkeypatch.setenv(name, value)
    assert distributed.start("off") == "off" and calls == []


def test_incomplete_variables_and_on_without_a_cluster_fail_clearly(calls, monkeypatch):
    with pytest.raises(ValueError, match="'on', but JAX detects no cluster"):
        distributed.start("on")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="needs JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID"):
        distributed.start("auto")
    with pytest.raises(ValueError, match="must be one of auto, on, off"):
        distributed.start("yes")
    assert calls == []


def test_a_detected_cluster_lets_jax_find_the_rest(calls, monkeypatch):
    # A Slurm job step of 4 tasks, as Slurm sets it: JAX's own detection reads these.
    slurm = {
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_NODELIST": "node[1-4]",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
    }
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.detected_cluster() == ("SlurmCluster", 4)
    assert distributed.start("auto") == "SlurmCluster"
    assert calls == [{"heartbeat_timeout_seconds": distributed.HEARTBEAT_TIMEOUT_S}]
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job is one host: nothing to join
    assert distributed.start("auto") == "one process" and len(calls) == 1


def test_a_cluster_whose_size_cannot_be_read_names_the_way_out(calls, monkeypatch):
    from jax._src.clusters import slurm_cluster  # noqa: PLC0415

    monkeypatch.setattr(slurm_cluster.SlurmCluster, "is_env_present", classmethod(lambda cls: True))
    monkeypatch.setattr(
        slurm_cluster.SlurmCluster, "get_process_count", classmethod(lambda cls: int("not a number"))
    )
    with pytest.raises(ValueError, match="detects a SlurmCluster but cannot read how many .*initialize=off"):
        distributed.start("auto")
    assert distributed.start("off") == "off" and calls == []


def test_lost_peer_is_recognised_only_with_peers(monkeypatch):
    gloo = jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Connection closed by peer")
    assert not distributed.lost_peer(gloo)  # one process: nothing to lose
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert distributed.lost_peer(gloo)
    assert not distributed.lost_peer(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: 80 GiB"))
    assert not distributed.lost_peer(ValueError("Gloo"))
    message = distributed.lost_peer_message(gloo)
    assert "lost a peer process" in message and "same command" in message and "\n" not in message
