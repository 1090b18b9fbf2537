"""Datasets: class names and splits, TFDS builders, the `prepare` CLI and grain pipelines.

Import the submodules you need (`class_names` is data only and cheap; `builders`, `prepare` and
`pipeline.tfds_source` import tensorflow_datasets).
"""
