"""Starting a multi-process run (`start`), and telling a lost peer from other failures.

`start(mode)` calls `jax.distributed.initialize` where this process is one of several:

- the explicit variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` (> 1) and `JAX_PROCESS_ID`
  (the test suite starts two local processes this way);
- a cluster JAX detects itself (`jax._src.clusters`: a Cloud TPU VM pod through its metadata
  server, GKE TPU through `TPU_WORKER_HOSTNAMES`, Kubernetes with the `kubernetes` package, Slurm
  through `SLURM_JOB_ID`/`SLURM_NTASKS`/..., Open MPI through `OMPI_MCA_orte_hnp_uri`), when it
  reports more than one process.

`mode`: 'auto' (the default) starts in those two cases and never otherwise, so a one-host run
never waits for a coordinator; 'on' always starts (and fails clearly when nothing names a
coordinator); 'off' never does (each process is a job of its own).

A lost peer: when one process of a job dies, the others fail in their next collective (on a CPU,
Gloo's "Connection closed by peer" at once) or, where a collective waits instead, when the
coordination service misses the dead process's heartbeats for `heartbeat_timeout_s` and aborts
them. `lost_peer(error)` recognises the first kind, which the training loop turns into one line
and `errors.LOST_PEER_EXIT_STATUS`.
"""

import os

import jax

MODES = ("auto", "on", "off")
HEARTBEAT_TIMEOUT_S = 60  # JAX's default is 100 s; see `start`

# Words of the errors a collective or the coordination service raises when a process is gone.
_LOST_PEER_MARKS = (
    "connection closed by peer",
    "connection reset by peer",
    "gloo",
    "heartbeat",
    "unavailable:",
    "deadline_exceeded",
    "nccl",
    "barrier failed",
    "coordination service",
    "socket closed",
    "broken pipe",
)


def _explicit() -> dict | None:
    """`jax.distributed.initialize`'s arguments from `JAX_NUM_PROCESSES` > 1 and its peers."""
    num = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if num <= 1:
        return None
    missing = [v for v in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if v not in os.environ]
    if missing:
        raise ValueError(
            f"JAX_NUM_PROCESSES={num} needs {' and '.join(missing)} too (the "
            "coordinator's host:port, and this process's index from 0)."
        )
    return {
        "coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
        "num_processes": num,
        "process_id": int(os.environ["JAX_PROCESS_ID"]),
    }


def detected_cluster() -> tuple[str, int] | None:
    """`(name, process count)` of the cluster JAX's own detection finds, else None.

    The same look-up as `jax.distributed.initialize()` without arguments (its opt-in methods,
    mpi4py, excepted); JAX keeps it in `jax._src.clusters` (jax 0.10).

    Raises:
        ValueError: a cluster is detected but its size cannot be read (Kubernetes without
            permission to read its pods, say).
    """
    from jax._src import clusters  # noqa: PLC0415 (JAX's cluster detection has no public name)

    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            if env.is_env_present():
                return env.__name__, int(env.get_process_count())
        except Exception as e:  # the cluster's own look-up (metadata server, API) failed
            first = " ".join(str(e).split())[:200]
            raise ValueError(
                f"JAX detects a {env.__name__} but cannot read how many processes "
                f"it has ({type(e).__name__}: {first}); fix that, or train on this "
                "host alone with --config.distributed.initialize=off."
            ) from e
    return None


def start(mode: str = "auto", *, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> str:
    """Starts JAX's distributed runtime where this process is one of several (see the module).

    Args:
      mode: 'auto', 'on' or 'off'.
      heartbeat_timeout_s: how long the coordination service waits for a silent process before
        it declares it dead and aborts the others (the bound on a lost host, where no collective
        fails first).

    Returns:
      How it started: 'already', 'off', 'one process', 'explicit' or the detected cluster's name.

    Raises:
      ValueError: `mode` is 'on' and nothing names a coordinator, or the explicit variables are
        incomplete.
    """
    if mode not in MODES:
        raise ValueError(f"distributed.initialize={mode!r}: must be one of {', '.join(MODES)}.")
    if jax.distributed.is_initialized():
        return "already"
    if mode == "off":
        return "off"
    timeouts = {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
    if (explicit := _explicit()) is not None:
        jax.distributed.initialize(**explicit, **timeouts)
        return "explicit"
    cluster = detected_cluster()
    if cluster is None and mode == "on":
        raise ValueError(
            "distributed.initialize='on', but JAX detects no cluster and "
            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are not "
            "set; set them, or use 'auto' to train on this host alone."
        )
    if mode == "auto" and (cluster is None or cluster[1] <= 1):
        return "one process"
    jax.distributed.initialize(**timeouts)
    return cluster[0] if cluster else "on"


def lost_peer(error: BaseException) -> bool:
    """Whether `error`, raised in a multi-process run, says another process is gone."""
    if jax.process_count() <= 1 or not isinstance(error, jax.errors.JaxRuntimeError | OSError):
        return False
    text = str(error).lower()
    return any(mark in text for mark in _LOST_PEER_MARKS)


def lost_peer_message(error: BaseException) -> str:
    """One line: a peer was lost, what failed, and that the same command resumes."""
    first = " ".join(str(error).split())[:160]
    return (
        f"process {jax.process_index()} of {jax.process_count()} lost a peer process "
        f"({type(error).__name__}: {first}); run the same command on every host again: it "
        "resumes from the last complete checkpoint."
    )
