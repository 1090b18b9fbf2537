"""Builds one dataset from the files a user downloaded.

    python -m zegot_jax.data.prepare --dataset=voc --manual_dir=/data/raw/voc \
        --data_dir=/data/tfds [--allow_partial] [--overwrite] [--num_threads=16]

`--dataset` is one of voc, context, coco_stuff, ade20k (builders `zegot_voc_aug`,
`zegot_context59`, `zegot_coco_stuff171`, `zegot_ade150`). The files and layout each expects are
printed by `--show_instructions` and listed in the README. Counts are checked against the official
ones; `--allow_partial` builds an incomplete copy on purpose. A copy already in `data_dir` is
checked, not rebuilt (`--overwrite` rebuilds); folders of killed builds are removed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow_datasets as tfds

from zegot_jax import errors, storage
from zegot_jax.data.builders import BUILDERS


def prepare(
    dataset: str,
    manual_dir: str | Path,
    data_dir: str | Path,
    *,
    allow_partial: bool = False,
    overwrite: bool = False,
    num_threads: int | None = None,
) -> tfds.core.DatasetBuilder:
    """Builds `dataset` into `data_dir` (array_record) and returns the builder.

    Raises:
        ValueError: unknown dataset, counts that differ from the official ones (unless
            `allow_partial`), or a bad file (named in the message).
        FileNotFoundError: `manual_dir` or a required sub-directory is missing.
    """
    if dataset not in BUILDERS:
        raise ValueError(f"Unknown --dataset={dataset!r}; choose one of {sorted(BUILDERS)}.")
    manual_dir = Path(manual_dir).expanduser()
    builder_cls = BUILDERS[dataset]
    if not manual_dir.is_dir():
        raise FileNotFoundError(
            f"--manual_dir {manual_dir} does not exist. Download the files "
            f"below into it:\n{builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    storage.check_writable(data_dir, "--data_dir")
    if storage.is_remote(data_dir):
        return _prepare_remote(
            dataset,
            manual_dir,
            storage.normalise(data_dir),
            allow_partial=allow_partial,
            overwrite=overwrite,
            num_threads=num_threads,
        )
    data_dir = Path(data_dir).expanduser()
    final = final_dir(dataset, data_dir)
    _remove_unfinished(data_dir / builder_cls.name)
    if final.exists() and not overwrite:
        return _existing(builder_cls, data_dir, allow_partial)
    # An existing copy is replaced only after the rebuild (in a side directory) succeeded.
    build_dir = data_dir
    if overwrite and final.exists():
        build_dir = data_dir / f".rebuild-{builder_cls.name}"
        shutil.rmtree(build_dir, ignore_errors=True)
    builder = builder_cls(data_dir=str(build_dir), allow_partial=allow_partial, num_threads=num_threads)
    tfds.disable_progress_bar()  # our own tqdm bar counts images against the total
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)), file_format="array_record"
    )
    if build_dir != data_dir:
        stale = final.with_name(final.name + ".old")
        final.rename(stale)
        (build_dir / builder_cls.name / str(builder_cls.VERSION)).rename(final)
        shutil.rmtree(stale)
        shutil.rmtree(build_dir)
        builder = builder_cls(data_dir=str(data_dir))
    return builder


def _prepare_remote(
    dataset: str,
    manual_dir: Path,
    data_dir: str,
    *,
    allow_partial: bool,
    overwrite: bool,
    num_threads: int | None,
) -> tfds.core.DatasetBuilder:
    """`prepare` into a gs:// `data_dir`: built in a local folder, then copied into the bucket.

    array_record writes local files only, so the shards are made here and uploaded; an existing
    copy is replaced only once the new one is whole in the bucket.
    """
    builder_cls = BUILDERS[dataset]
    final = f"{data_dir}/{builder_cls.name}/{builder_cls.VERSION}"
    if storage.exists(f"{final}/dataset_info.json") and not overwrite:
        return _existing(builder_cls, data_dir, allow_partial)
    with tempfile.TemporaryDirectory(prefix="zegot-prepare-") as local:
        built = prepare(dataset, manual_dir, local, allow_partial=allow_partial, num_threads=num_threads)
        staged = f"{final}.rebuild" if storage.exists(final) else final
        storage.copy_tree(built.data_dir, staged)
    if staged != final:
        storage.remove_tree(final)
        storage.move_tree(staged, final)
    return builder_cls(data_dir=data_dir)


def final_dir(dataset: str, data_dir: str | Path) -> Path:
    """Where the prepared copy of `dataset` lives inside `data_dir`."""
    builder_cls = BUILDERS[dataset]
    return Path(data_dir).expanduser() / builder_cls.name / str(builder_cls.VERSION)


def _remove_unfinished(folder: Path) -> None:
    """Deletes the `incomplete.*` folders that killed builds leave behind, with a note."""
    for stale in sorted(folder.glob(f"{tfds.core.constants.INCOMPLETE_PREFIX}*")):
        print(f"note: removing {stale}, left by a build that was killed.", file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)


def _existing(builder_cls: type, data_dir: Path, allow_partial: bool) -> tfds.core.DatasetBuilder:
    """The copy already in `data_dir`, after checking it is complete (unless `allow_partial`)."""
    builder = builder_cls(data_dir=str(data_dir))
    counts = {name: info.num_examples for name, info in builder.info.splits.items()}
    short = {
        split: counts.get(split, 0)
        for split, expected in builder_cls.EXPECTED_COUNTS.items()
        if counts.get(split, 0) not in expected
    }
    if not allow_partial and (short or builder.info.metadata.get("partial", False)):
        official = {k: " or ".join(map(str, v)) for k, v in builder_cls.EXPECTED_COUNTS.items()}
        raise ValueError(
            f"{data_dir} already holds a partial {builder_cls.name} ({counts}; "
            f"official {official}). Rebuild it with --overwrite (the old copy is "
            "replaced only if the rebuild succeeds), or pass --allow_partial to use it."
        )
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    """Builds (or checks) the dataset the command line names and prints its splits; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--manual_dir", help="directory with the downloaded archives/trees")
    parser.add_argument("--data_dir", help="TFDS data directory to write into")
    parser.add_argument(
        "--allow_partial", action="store_true", help="build even if files are missing (tests, quick looks)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    parser.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="threads that read and convert files (default: CPU count)",
    )
    parser.add_argument(
        "--show_instructions", action="store_true", help="print the expected files and layout, then exit"
    )
    args = parser.parse_args(argv)
    if args.show_instructions:
        print(BUILDERS[args.dataset].MANUAL_DOWNLOAD_INSTRUCTIONS)
        return 0
    if not args.manual_dir or not args.data_dir:
        parser.error("--manual_dir and --data_dir are required")
    existed = not args.overwrite and storage.exists(
        f"{storage.normalise(args.data_dir)}/{BUILDERS[args.dataset].name}/"
        f"{BUILDERS[args.dataset].VERSION}/dataset_info.json"
    )
    with errors.user_errors():
        builder = prepare(
            args.dataset,
            args.manual_dir,
            args.data_dir,
            allow_partial=args.allow_partial,
            overwrite=args.overwrite,
            num_threads=args.num_threads,
        )
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    if existed:
        print(
            f"{builder.name} is already prepared in {builder.data_dir}: {splits} (nothing "
            "written; --overwrite rebuilds it)"
        )
    else:
        print(f"{builder.name} written to {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
