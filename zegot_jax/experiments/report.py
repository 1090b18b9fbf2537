"""Tables of a ranking (`ranking.rank_variants`).

Mean ± std over seeds, 95% Student-t intervals, and differences paired by seed.

`rows` maps a variant's name to its per-seed rows `{'seed', 'miou_seen', 'miou_unseen', 'hiou',
'prompt_diversity', 'plan_entropy', ...}` (scores in [0, 1]; printed in points).
"""

from collections.abc import Collection, Sequence

import numpy as np
from scipy import stats

from zegot_jax import tables

SCORES = ("miou_seen", "miou_unseen", "hiou", "prompt_diversity", "plan_entropy")
HEADLINE = SCORES[:3]


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, standard deviation (ddof 1) and the half-width of the 95% t-interval of the mean."""
    values = np.asarray(values, float)
    n = len(values)
    if n < 2:
        return float(values.mean()), float("nan"), float("nan")
    std = float(values.std(ddof=1))
    return float(values.mean()), std, float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def scores_table(rows: dict[str, list[dict]]) -> str:
    """One line per variant: runs, mean ± std of each score, the hIoU interval."""
    lines = []
    for name, results in rows.items():
        cells = []
        for key in SCORES:
            values = np.array([r.get(key, np.nan) for r in results], float)
            scale, digits = (100, 1) if key.startswith(("miou", "hiou")) else (1, 3)
            if np.isnan(values).any():  # diversity of a single prompt is undefined
                cells.append("n/a")
                continue
            mean, std, half = interval(scale * values)
            cells.append(
                f"{mean:.{digits}f} ± {std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"
            )
            if key == "hiou":
                cells.append(
                    f"[{mean - half:.1f}, {mean + half:.1f}]" if np.isfinite(half) else "(deterministic)"
                )
        lines.append((name, len(results), *cells))
    return tables.markdown(
        ("variant", "runs", "mIoU(S)", "mIoU(U)", "hIoU", "hIoU 95% CI", "prompt diversity", "plan entropy"),
        lines,
    )


def against_first(rows: dict[str, list[dict]]) -> tuple[tuple[str, str, str], ...]:
    """Pairs `(variant, first, 'variant - first')` for every variant after the first."""
    names = list(rows)
    return tuple((n, names[0], f"{n} - {names[0]}") for n in names[1:])


def paired_table(
    rows: dict[str, list[dict]],
    pairs: Sequence[tuple[str, str, str]] | None = None,
    deterministic: Collection[str] = (),
) -> str:
    """Mean paired (same-seed) differences A - B with 95% t-intervals, in points.

    Args:
        rows: a variant's name -> its per-seed rows (see the module docstring).
        pairs: `(A, B, label)`; default every variant against the first (`against_first`). Pairs
          naming a variant not in `rows` are left out.
        deterministic: variants whose single run stands for every seed.
    """
    lines = []
    for a, b, label in against_first(rows) if pairs is None else pairs:
        if a not in rows or b not in rows:
            continue
        by_seed_a = {r["seed"]: r for r in rows[a]}
        by_seed_b = {r["seed"]: r for r in rows[b]}
        if len(rows[b]) == 1 and b in deterministic:
            by_seed_b = dict.fromkeys(by_seed_a, rows[b][0])
        if len(rows[a]) == 1 and a in deterministic:
            by_seed_a = dict.fromkeys(by_seed_b, rows[a][0])
        seeds = sorted(set(by_seed_a) & set(by_seed_b))
        cells = []
        for key in HEADLINE:
            diff = np.array([100 * (by_seed_a[s][key] - by_seed_b[s][key]) for s in seeds])
            if len(diff) < 2:
                cells.append("n/a")
                continue
            mean, _, half = interval(diff)
            cells.append(f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]")
        lines.append((label, *cells, len(seeds)))
    return tables.markdown(("difference (paired by seed)", "mIoU(S)", "mIoU(U)", "hIoU", "seeds"), lines)


def report(
    rows: dict[str, list[dict]],
    pairs: Sequence[tuple[str, str, str]] | None = None,
    deterministic: Collection[str] = (),
) -> str:
    """The scores table, a blank line, and the paired differences (Markdown)."""
    return scores_table(rows) + "\n\n" + paired_table(rows, pairs, deterministic)
