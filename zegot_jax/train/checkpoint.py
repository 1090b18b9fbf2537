"""Orbax checkpoints of what trains: params, optimizer state, step, RNG, data iterator, config.

The frozen CLIP weights are never written: they come from `clip.weights` at restore time.
Saves are asynchronous; `latest_step` and `restore` give automatic resume from a workdir.
"""

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from zegot_jax.train import orbax_errors


def _directory(workdir: str) -> str:
    return str(Path(workdir).absolute() / "checkpoints") if "://" not in workdir else \
        f"{workdir.rstrip('/')}/checkpoints"


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint folder with at least one step (creates nothing)."""
    return saved_step(workdir) is not None


def saved_step(workdir: str) -> int | None:
    """The newest checkpointed step of `workdir`, or None (creates nothing)."""
    if "://" not in workdir:
        directory = Path(_directory(workdir))
        if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
            return None
    ckpt = Checkpointer(workdir, async_save=False, create=False)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def unreadable(step: int, directory: str, error: Exception) -> str:
    """`step N: <file> is unreadable (<first words of the error>)`, naming the deepest file.

    The other reads of that restore failed too, and would each print a screen of tensorstore
    specs: `orbax_errors.quiet_after_failure` keeps them off the console from here on.
    """
    orbax_errors.quiet_after_failure()
    message = str(error)
    files = re.findall(r'local file "([^"]+)"', message)
    where = files[-1] if files else f"{directory}/{step}"
    reason = message.split("[tensorstore_spec")[0].strip().split(": ")[-1][:160]
    return f"step {step}: {where} is unreadable, truncated or corrupt ({reason})"


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items this project saves.

    `create=False` (reading another run) never creates the checkpoint folder.
    """

    def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True,
                 create: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save,
                                               create=create)
        self.workdir = workdir
        self.manager = ocp.CheckpointManager(_directory(workdir), options=options)
        self._write_failed = False
        orbax_errors.quiet_background_errors()

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
        try:
            self.manager.save(step, args=args, force=force)  # raises an earlier save's failure
        except Exception as e:
            raise self._write_error(e) from e

    def _write_error(self, error: Exception) -> Exception:
        self._write_failed = True
        return orbax_errors.write_error(error, str(self.manager.directory), self.latest_step())

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, dict]:
        """Restores `(state, data_state, config_dict)` at `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.manager.directory}.")
        try:
            return self._read(abstract_state, step)
        except Exception as e:  # tensorstore and JSON errors of a damaged file
            if shapes := orbax_errors.other_shapes(e):
                raise ValueError(
                    f"Checkpoint step {step} of {self.workdir} holds parameters of other shapes "
                    f"than this model's (saved {shapes[0]}, needed {shapes[1]}): it was trained "
                    "with another model config (model.num_prompts, model.context_tokens, "
                    "model.layers, clip.weights, ...). Use a run of the same model.") from e
            raise ValueError(f"Checkpoint {unreadable(step, str(self.manager.directory), e)}. "
                             "Delete that step's folder to use the one before it.") from e

    def _read(self, abstract_state: Any, step: int) -> tuple[Any, Any, dict]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        ))
        return restored.state, _from_jsonable(restored.data["state"]), restored.config

    def restore_intact(self, abstract_state: Any) -> tuple[int, tuple[Any, Any, dict]]:
        """Restores the newest step that reads back whole; damaged newer steps are moved to
        `workdir/corrupt_checkpoints/` with a note on stderr.

        Raises:
          ValueError: no step is intact (each one named with its damaged file).
        """
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self._read(abstract_state, step)
            except Exception as e:  # a damaged file: try the step before
                failures.append((step, unreadable(step, str(self.manager.directory), e)))
                continue
            for bad, reason in failures:
                print(f"note: checkpoint {reason}; {self._set_aside(bad)}, resuming from step "
                      f"{step}.", file=sys.stderr, flush=True)
            if failures:
                self.manager.reload()
            return step, restored
        raise ValueError("No intact checkpoint to resume from: " + "; ".join(
            reason for _, reason in failures) + ". Delete the checkpoints/ folder to start over.")

    def _set_aside(self, step: int) -> str:
        """Moves a damaged step out of the way (deletes it on remote storage); says what it did.

        Locally it is renamed into `workdir/corrupt_checkpoints/` (to `N-2`, `N-3`... when an
        earlier `N` is there): nothing is deleted, and nothing moves through a link.

        Raises:
          ValueError: `corrupt_checkpoints` is a link or a file, or the rename failed.
        """
        if "://" in self.workdir:
            self.manager.delete(step)
            return "deleted it"
        aside = Path(self.workdir) / "corrupt_checkpoints"
        source = Path(_directory(self.workdir)) / str(step)
        if aside.is_symlink() or (aside.exists() and not aside.is_dir()):
            raise ValueError(f"Checkpoint step {step} is damaged and should be set aside, but "
                             f"{aside} is a link or a file, not a folder of this run; move it "
                             f"away, or delete {source} yourself, and start again.")
        aside.mkdir(exist_ok=True)
        target, n = aside / str(step), 1
        while os.path.lexists(target):
            n += 1
            target = aside / f"{step}-{n}"
        try:
            os.rename(source, target)  # renames a link itself, never what it points to
        except OSError as e:
            raise ValueError(f"Checkpoint step {step} is damaged and could not be moved to "
                             f"{target} ({e.strerror}); delete {source} yourself and start "
                             "again.") from e
        return f"moved it to {target}"

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e) from e

    def close(self) -> None:
        """Waits for pending saves and closes (a failure already raised is not raised again)."""
        reported, failures = self._write_failed, []
        for finish in (self.wait, self.manager.close):
            try:
                finish()
            except Exception as e:  # close even when the wait failed
                failures.append(e)
        if failures and not reported:
            raise failures[0]


def read_config(workdir: str) -> dict:
    """The config saved with the latest checkpoint of `workdir` (as a plain dict)."""
    if not has_checkpoint(workdir):
        raise FileNotFoundError(f"No checkpoint in {_directory(workdir)}: is {workdir!r} a "
                                "training workdir?")
    ckpt = Checkpointer(workdir, async_save=False, create=False)
    try:
        failures = []
        for step in sorted(ckpt.manager.all_steps(), reverse=True):  # the newest readable one
            try:
                return ckpt.manager.restore(
                    step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
            except Exception as e:  # a damaged file
                failures.append(unreadable(step, _directory(workdir), e))
        raise ValueError("No readable config in any checkpoint: " + "; ".join(failures) + ".")
    finally:
        ckpt.close()


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config stored with a run's latest checkpoint (JSON lists turned back into tuples)."""
    return ml_collections.ConfigDict(_tuples(read_config(workdir)))


# Sections whose fields are the user's, not the code's: a saved run's copy replaces the current one
# whole (a field of the run's transport options is never dropped for being unknown to this config).
FREE_FORM = ("model.ot.options",)


def update_from_saved(config: ml_collections.ConfigDict, saved: dict, *, _path: str = "") -> None:
    """Overwrites the fields of `config` that `saved` also has, recursively, in place.

    Fields added to the code after the run was saved keep `config`'s values; fields the code no
    longer has are dropped. Sections in `FREE_FORM` are taken from `saved` as they are.
    """
    for key, value in _tuples(saved).items():
        path = f"{_path}{key}"
        if path in FREE_FORM and isinstance(value, dict):
            config[key] = ml_collections.ConfigDict(value)
        elif key not in config:
            continue
        elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
            update_from_saved(config[key], value, _path=f"{path}.")
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
