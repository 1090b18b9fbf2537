"""Train variants of one config on the synthetic world and tabulate their scores.

    rows = compare_variants(config, {"OT": {}, "no OT": {"model.ot.enabled": False}}, "runs/cmp")
    print(markdown_table(rows))

Each variant is the base config with dotted-key overrides, trained in `workdir_root/<slug>` by
`zegot_jax.train.loop.train` (a finished run there is resumed, i.e. only re-evaluated).
"""

import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from zegot_jax.config_overrides import override

COLUMNS = ("miou_seen", "miou_unseen", "hiou", "miou", "pixel_acc")


def slug(name: str) -> str:
    """A directory name for a variant ('OT eps=0.01' -> 'ot-eps-0.01')."""
    text = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
    if not text:
        raise ValueError(f"Variant name {name!r} has no letters or digits to name its directory.")
    return text


def compare_variants(base_config: ml_collections.ConfigDict,
                     variants: Mapping[str, Mapping[str, Any]], workdir_root: str, *,
                     train_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None
                     ) -> list[dict[str, Any]]:
    """Trains and evaluates each variant; returns one row per variant.

    Args:
      base_config: the experiment config every variant starts from.
      variants: name -> dotted-key overrides, e.g. `{'model.ot.epsilon': 0.01}`.
      workdir_root: each variant trains in `workdir_root/slug(name)`.
      train_fn: `(config, workdir) -> evaluation summary`; default `loop.train`.

    Returns:
      Rows `{'variant', 'overrides', 'miou_seen', 'miou_unseen', 'hiou', 'miou', 'pixel_acc',
      'seconds', 'workdir'}`.

    Raises:
      KeyError: an override names a field the config does not have (checked before any training).
      ValueError: no variants, or two names with the same directory.
    """
    if not variants:
        raise ValueError("No variants to compare: give {name: {dotted.key: value}}.")
    dirs = {name: slug(name) for name in variants}
    if len(set(dirs.values())) != len(dirs):
        raise ValueError(f"Variant names {list(dirs)} map to the same directory; rename them.")
    configs = {name: override(base_config, overrides) for name, overrides in variants.items()}
    if train_fn is None:
        from zegot_jax.train import loop  # noqa: PLC0415 (the loop pulls in the data pipeline)

        train_fn = loop.train
    rows = []
    for name, config in configs.items():
        workdir = str(Path(workdir_root) / dirs[name])
        start = time.perf_counter()
        summary = train_fn(config, workdir)
        row = {"variant": name, "overrides": dict(variants[name])}
        row.update({k: float(summary[k]) for k in COLUMNS if k in summary})
        row.update(seconds=round(time.perf_counter() - start, 1), workdir=workdir)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (scores in percent)."""
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    head = "| variant | overrides | " + " | ".join(columns) + " | seconds |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for r in rows:
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(base)"
        scores = " | ".join(f"{100 * r[c]:.1f}" if c in r else "" for c in columns)
        lines.append(f"| {r['variant']} | {overrides} | {scores} | {r['seconds']} |")
    return "\n".join(lines)
