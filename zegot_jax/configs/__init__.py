"""The configs that ship with the package, the launch checks, and dotted-key overrides.

- `common` (every default) and one module per experiment: `voc`, `context`, `coco`, `ade`,
  `synthetic` (the demo); each `get_config(arg)` starts from `common.get_config()`.
- `checks`: every field's rule, run at launch (and on a saved run) before anything is built.
- `overrides`: the dotted-key walker (`get`, `override`, `flatten`, `update_from_saved`).

`configs/*.py` in a checkout re-export these, so `train.py --config=configs/voc.py` and
`from zegot_jax.configs import voc` (a notebook on a `pip install`ed wheel, e.g. in Colab) build
the same config.
"""
