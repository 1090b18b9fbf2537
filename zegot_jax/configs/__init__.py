"""The configs that ship with the package: `common` (every default) and `synthetic` (the demo).

`configs/common.py` and `configs/synthetic.py` in a checkout re-export these, so
`train.py --config=configs/synthetic.py` and `from zegot_jax.configs import synthetic` (a notebook
on a `pip install`ed wheel, e.g. in Colab) build the same config. The dataset configs
(`configs/voc.py`, ...) stay files of the checkout and start from `common.get_config()`.
"""
