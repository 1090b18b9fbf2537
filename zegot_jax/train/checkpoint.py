"""Orbax checkpoints of what trains: params, optimizer state, step, RNG, data iterator, config.

The frozen CLIP weights are never written: they come from `clip.weights` at restore time.
Saves are asynchronous; `latest_step` and `restore` give automatic resume from a workdir.
"""

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp


def _directory(workdir: str) -> str:
    return str(Path(workdir).absolute() / "checkpoints") if "://" not in workdir else \
        f"{workdir.rstrip('/')}/checkpoints"


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items this project saves."""

    def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(_directory(workdir), options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any,
             config: ml_collections.ConfigDict, *, force: bool = False) -> None:
        """Starts an (asynchronous) save of `state` and the data iterator state at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"state": _jsonable(data_state)}),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        )
        self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, dict]:
        """Restores `(state, data_state, config_dict)` at `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.manager.directory}.")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        ))
        return restored.state, _from_jsonable(restored.data["state"]), restored.config

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def read_config(workdir: str) -> dict:
    """The config saved with the latest checkpoint of `workdir` (as a plain dict)."""
    ckpt = Checkpointer(workdir, async_save=False)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {_directory(workdir)}: is {workdir!r} a "
                                "training workdir?")
    config = ckpt.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    ckpt.close()
    return config.config


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config stored with a run's latest checkpoint (JSON lists turned back into tuples)."""
    return ml_collections.ConfigDict(_tuples(read_config(workdir)))


def update_from_saved(config: ml_collections.ConfigDict, saved: dict) -> None:
    """Overwrites the fields of `config` that `saved` also has, recursively, in place.

    Fields added to the code after the run was saved keep `config`'s values; fields the code no
    longer has are dropped.
    """
    for key, value in _tuples(saved).items():
        if key not in config:
            continue
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
            update_from_saved(config[key], value)
        else:
            config[key] = value


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def abstract(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of a concrete tree, for restoring into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _jsonable(data_state: Any) -> Any:
    if isinstance(data_state, bytes):
        return {"__bytes__": data_state.decode("utf-8")}
    return data_state


def _from_jsonable(data_state: Any) -> Any:
    if isinstance(data_state, dict) and "__bytes__" in data_state:
        return data_state["__bytes__"].encode("utf-8")
    return data_state
