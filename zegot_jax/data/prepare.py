"""Builds one dataset from the files a user downloaded.

    python -m zegot_jax.data.prepare --dataset=voc --manual_dir=/data/raw/voc \
        --data_dir=/data/tfds [--allow_partial] [--overwrite] [--num_threads=16]

`--dataset` is one of voc, context, coco_stuff, ade20k (builders `zegot_voc_aug`,
`zegot_context59`, `zegot_coco_stuff171`, `zegot_ade150`). The files and layout each expects are
printed by `--show_instructions` and listed in the README. Counts are checked against the official
ones; `--allow_partial` builds an incomplete copy on purpose.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import tensorflow_datasets as tfds

from zegot_jax.data.builders import BUILDERS


def prepare(dataset: str, manual_dir: str | Path, data_dir: str | Path, *,
            allow_partial: bool = False, overwrite: bool = False,
            num_threads: int | None = None) -> tfds.core.DatasetBuilder:
    """Builds `dataset` into `data_dir` (array_record) and returns the builder.

    Raises:
        ValueError: unknown dataset, counts that differ from the official ones (unless
            `allow_partial`), or a bad file (named in the message).
        FileNotFoundError: `manual_dir` or a required sub-directory is missing.
    """
    if dataset not in BUILDERS:
        raise ValueError(f'Unknown --dataset={dataset!r}; choose one of {sorted(BUILDERS)}.')
    manual_dir = Path(manual_dir).expanduser()
    builder_cls = BUILDERS[dataset]
    if not manual_dir.is_dir():
        raise FileNotFoundError(f'--manual_dir {manual_dir} does not exist. Download the files '
                                f'below into it:\n{builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    data_dir = Path(data_dir).expanduser()
    final = data_dir / builder_cls.name / str(builder_cls.VERSION)
    # An existing copy is replaced only after the rebuild (in a side directory) succeeded.
    build_dir = data_dir
    if overwrite and final.exists():
        build_dir = data_dir / f'.rebuild-{builder_cls.name}'
        shutil.rmtree(build_dir, ignore_errors=True)
    builder = builder_cls(data_dir=str(build_dir), allow_partial=allow_partial,
                          num_threads=num_threads)
    tfds.disable_progress_bar()  # our own tqdm bar counts images against the total
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
        file_format='array_record')
    if build_dir != data_dir:
        stale = final.with_name(final.name + '.old')
        final.rename(stale)
        (build_dir / builder_cls.name / str(builder_cls.VERSION)).rename(final)
        shutil.rmtree(stale)
        shutil.rmtree(build_dir)
        builder = builder_cls(data_dir=str(data_dir))
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dataset', required=True, choices=sorted(BUILDERS))
    parser.add_argument('--manual_dir', help='directory with the downloaded archives/trees')
    parser.add_argument('--data_dir', help='TFDS data directory to write into')
    parser.add_argument('--allow_partial', action='store_true',
                        help='build even if files are missing (tests, quick looks)')
    parser.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
    parser.add_argument('--num_threads', type=int, default=None,
                        help='threads that read and convert files (default: CPU count)')
    parser.add_argument('--show_instructions', action='store_true',
                        help='print the expected files and layout, then exit')
    args = parser.parse_args(argv)
    if args.show_instructions:
        print(BUILDERS[args.dataset].MANUAL_DOWNLOAD_INSTRUCTIONS)
        return 0
    if not args.manual_dir or not args.data_dir:
        parser.error('--manual_dir and --data_dir are required')
    builder = prepare(args.dataset, args.manual_dir, args.data_dir,
                      allow_partial=args.allow_partial, overwrite=args.overwrite,
                      num_threads=args.num_threads)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f'{builder.name} written to {builder.data_dir}: {splits}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
