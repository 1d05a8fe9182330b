"""Datasets shipped with pyro_nfvi (no network access, ever).

* :func:`load_binarized_mnist` -- the statically binarized MNIST (train/valid/test, 784 pixels).
"""
from .mnist import NUM_PIXELS, SPLIT_SIZES, SPLITS, BinarizedMNIST, default_path, load_binarized_mnist

__all__ = ["BinarizedMNIST", "NUM_PIXELS", "SPLITS", "SPLIT_SIZES", "default_path", "load_binarized_mnist"]
