"""Experiments over the library.

Rankings of variants over seeds and their report, the training-free probes of a CLIP, and the OT
lab's tour and figures.

- `ranking`: `rank_variants` (variants x seeds, the seeds of a variant in one vmapped program);
  `compare_variants` (one resumable, checkpointed run per variant).
- `report`: mean ± std, 95% t-intervals, differences paired by seed.
- `zero_shot`: training-free dense mIoU and caption retrieval of a CLIP, with chance levels.
- `ot_lab`: the OT notebook's tour of `model.ot` settings and its plans figure.
"""
