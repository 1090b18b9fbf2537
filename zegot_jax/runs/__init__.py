"""A run on disk.

Its checkpoints (`checkpoint`), the workdir lock (`workdir_lock`), orbax's failures as one line
(`orbax_errors`), and reading a finished run back (`saved`).

Training writes runs through this package; evaluation, inference and the experiments read them
through it and never through `zegot_jax.train`.
"""
