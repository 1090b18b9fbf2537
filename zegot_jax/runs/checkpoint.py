"""Orbax checkpoints of what trains: params, optimizer state, step, RNG, data iterator, config.

Each step holds four items: `params` (the `Trainable` state, all that inference reads),
`train_state` (step, optimizer state, RNG), `data` (the iterator's position) and `config`. Runs
saved before `params` was an item of its own hold one `state` item with all four of the train
state's parts; both layouts are read. The frozen CLIP weights are never written: they come from
`clip.weights` at restore time. Saves are asynchronous; `latest_step` and `restore` give automatic
resume from a workdir.
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
from etils import epath

from zegot_jax import storage
from zegot_jax.configs.overrides import from_json
from zegot_jax.runs import orbax_errors

CHECKPOINTS = "checkpoints"  # the folder of a workdir that holds its steps
PARAMS, TRAIN_STATE, OLD_STATE = "params", "train_state", "state"  # items (OLD_STATE: old layout)


def directory(workdir: str) -> str:
    """The checkpoint folder of `workdir`."""
    return (
        str(Path(workdir).absolute() / CHECKPOINTS)
        if "://" not in workdir
        else f"{workdir.rstrip('/')}/{CHECKPOINTS}"
    )


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint folder with at least one step (creates nothing)."""
    return saved_step(workdir) is not None


def saved_step(workdir: str) -> int | None:
    """The newest checkpointed step of `workdir`, or None (creates nothing)."""
    if "://" not in workdir:
        folder = Path(directory(workdir))
        if not folder.is_dir() or not any(p.name.isdigit() for p in folder.iterdir()):
            return None
    ckpt = Checkpointer(workdir, async_save=False, create=False)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def unreadable(step: int, folder: str, error: Exception) -> str:
    """`step N: <file> is unreadable (<first words of the error>)`, naming the deepest file.

    The other reads of that restore failed too, and would each print a screen of tensorstore
    specs: `orbax_errors.quiet_after_failure` keeps them off the console from here on.
    """
    orbax_errors.quiet_after_failure()
    message = str(error)
    files = re.findall(r'local file "([^"]+)"', message)
    where = files[-1] if files else f"{folder}/{step}"
    reason = message.split("[tensorstore_spec")[0].strip().split(": ")[-1][:160]
    return f"step {step}: {where} is unreadable, truncated or corrupt ({reason})"


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items this project saves.

    `create=False` (reading another run) never creates the checkpoint folder.
    """

    def __init__(self, workdir: str, *, max_to_keep: int = 2, async_save: bool = True, create: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=create
        )
        self.workdir = workdir
        self.manager = ocp.CheckpointManager(directory(workdir), options=options)
        self._write_failed = False
        orbax_errors.quiet_background_errors()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        data_state: Any,
        config: ml_collections.ConfigDict,
        *,
        force: bool = False,
    ) -> None:
        """Starts an (asynchronous) save of `state` and the data iterator state at `step`."""
        rest = {k: v for k, v in state.items() if k != "params"}
        args = ocp.args.Composite(
            **{PARAMS: ocp.args.StandardSave(state["params"]), TRAIN_STATE: ocp.args.StandardSave(rest)},
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
            raise self._read_error(e, step) from e

    def _read_error(self, error: Exception, step: int) -> ValueError:
        """One line for a failed restore: other parameter shapes, or the damaged file."""
        if shapes := orbax_errors.other_shapes(error):
            return ValueError(
                f"Checkpoint step {step} of {self.workdir} holds parameters of other shapes "
                f"than this model's (saved {shapes[0]}, needed {shapes[1]}): it was trained "
                "with another model config (model.num_prompts, model.context_tokens, "
                "model.layers, clip.weights, ...). Use a run of the same model."
            )
        return ValueError(
            f"Checkpoint {unreadable(step, str(self.manager.directory), error)}. "
            "Delete that step's folder to use the one before it."
        )

    def _read(self, abstract_state: Any, step: int) -> tuple[Any, Any, dict]:
        json_items = {"data": ocp.args.JsonRestore(), "config": ocp.args.JsonRestore()}
        if self._old_layout(step):
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    **{OLD_STATE: ocp.args.StandardRestore(abstract_state)}, **json_items
                ),
            )
            state = restored[OLD_STATE]
        else:
            rest = {k: v for k, v in abstract_state.items() if k != "params"}
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        PARAMS: ocp.args.StandardRestore(abstract_state["params"]),
                        TRAIN_STATE: ocp.args.StandardRestore(rest),
                    },
                    **json_items,
                ),
            )
            state = {**restored[TRAIN_STATE], "params": restored[PARAMS]}
        return state, _from_jsonable(restored.data["state"]), restored.config

    def _old_layout(self, step: int) -> bool:
        """Whether `step` was saved before `params` was an item of its own."""
        folder = epath.Path(str(self.manager.directory)) / str(step)
        return not (folder / PARAMS).exists() and (folder / OLD_STATE).exists()

    def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
        """The trainable parameters alone at `step` (default: the latest): no optimizer needed.

        Raises:
            FileNotFoundError: no checkpoint. ValueError: the step is damaged or holds parameters of
              other shapes (as `restore`).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.manager.directory}.")
        try:
            if self._old_layout(step):  # the params subtree of the whole train state
                wanted = {"params": abstract_params}
                return self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        **{
                            OLD_STATE: ocp.args.PyTreeRestore(
                                wanted,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
                                partial_restore=True,
                            )
                        }
                    ),
                )[OLD_STATE]["params"]
            return self.manager.restore(
                step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(abstract_params)})
            )[PARAMS]
        except Exception as e:  # tensorstore and JSON errors of a damaged file
            raise self._read_error(e, step) from e

    def restore_intact(self, abstract_state: Any) -> tuple[int, tuple[Any, Any, dict]]:
        """Restores the newest step that reads back whole.

        Damaged newer steps are moved to `workdir/corrupt_checkpoints/` with a note on stderr.

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
                print(
                    f"note: checkpoint {reason}; {self._set_aside(bad)}, resuming from step {step}.",
                    file=sys.stderr,
                    flush=True,
                )
            if failures:
                self.manager.reload()
            return step, restored
        raise ValueError(
            "No intact checkpoint to resume from: "
            + "; ".join(reason for _, reason in failures)
            + ". Delete the checkpoints/ folder to start over."
        )

    def _set_aside(self, step: int) -> str:
        """Moves a damaged step into `workdir/corrupt_checkpoints/`; says what it did.

        It becomes `corrupt_checkpoints/N` (`N-2`, `N-3`... when an earlier `N` is there). Locally
        it is renamed, and nothing moves through a link; in a bucket each object is copied and
        only then removed. Nothing is deleted that was not copied.

        Raises:
            ValueError: `corrupt_checkpoints` is a link or a file, or the rename failed.
        """
        aside = storage.path(self.workdir) / "corrupt_checkpoints"
        source = storage.path(directory(self.workdir)) / str(step)
        remote = storage.is_remote(self.workdir)
        if not remote and (os.path.islink(aside) or (aside.exists() and not aside.is_dir())):
            raise ValueError(
                f"Checkpoint step {step} is damaged and should be set aside, but "
                f"{aside} is a link or a file, not a folder of this run; move it "
                f"away, or delete {source} yourself, and start again."
            )
        target, n = aside / str(step), 1
        while storage.exists(target):  # a link counts as taken, never followed
            n += 1
            target = aside / f"{step}-{n}"
        try:  # locally a rename (of a link itself); in a bucket copied whole, then removed
            storage.move_tree(source, target)
        except OSError as e:
            if remote:
                raise
            raise ValueError(
                f"Checkpoint step {step} is damaged and could not be moved to "
                f"{target} ({e.strerror}); delete {source} yourself and start "
                "again."
            ) from e
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
        raise FileNotFoundError(f"No checkpoint in {directory(workdir)}: is {workdir!r} a training workdir?")
    ckpt = Checkpointer(workdir, async_save=False, create=False)
    try:
        failures = []
        for step in sorted(ckpt.manager.all_steps(), reverse=True):  # the newest readable one
            try:
                return ckpt.manager.restore(
                    step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
                ).config
            except Exception as e:  # a damaged file
                failures.append(unreadable(step, directory(workdir), e))
        raise ValueError("No readable config in any checkpoint: " + "; ".join(failures) + ".")
    finally:
        ckpt.close()


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config stored with a run's latest checkpoint (JSON lists turned back into tuples)."""
    return ml_collections.ConfigDict(from_json(read_config(workdir)))


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
