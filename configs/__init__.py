"""The files `--config=` reads; each re-exports its experiment's module of `zegot_jax.configs`."""
