"""The one module that names mesh axes: a data-parallel mesh over every device of every process.

Parameters, optimizer state and the frozen CLIP weights are replicated; batches are sharded on the
leading axis over `DATA`. Each process contributes its own local slice of the global batch.
Evaluation uses a mesh over this process's devices alone (`local_mesh`): processes score their own
images, whose shapes differ between processes, and reduce their counts once at the end.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, axis `DATA`."""
    return Mesh(np.asarray(jax.devices()), (DATA,))


def local_mesh() -> Mesh:
    """A 1-D mesh over this process's devices, axis `DATA`."""
    return Mesh(np.asarray(jax.local_devices()), (DATA,))


def to_local_replicas(tree: Any, mesh: Mesh) -> Any:
    """Copies every array of `tree` onto each device of the process-local `mesh`.

    Arrays replicated over a global mesh (the training state) are read from this process's own
    copy, so no data crosses processes.
    """
    target = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return jax.device_put(x, target)

    return jax.tree.map(put, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of everything that is not a batch."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: leading axis split over `DATA`."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def batch_problem(global_batch_size: int, devices: int) -> str | None:
    """Why `global_batch_size` cannot be split over `devices` (None when it can)."""
    if global_batch_size % devices:
        return (
            f"train.global_batch_size={global_batch_size} is not divisible by the {devices} "
            f"devices; use a multiple of {devices}."
        )
    return None


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """This process's share of the global batch; fails clearly when it does not divide."""
    if problem := batch_problem(global_batch_size, mesh.devices.size):
        raise ValueError(problem)
    return global_batch_size // jax.process_count()


def to_global(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays sharded over `DATA`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
