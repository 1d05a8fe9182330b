"""The statically binarized MNIST of Larochelle & Murray (2011), shipped with the package.

The file ``pyro_nfvi/datasets/data/binarized_mnist.npz`` holds three ``uint8`` arrays ``train``
(50000 images), ``valid`` (10000) and ``test`` (10000).  Each row is one 28x28 image of 0/1 pixels,
flattened in row-major order and packed eight pixels to a byte with ``numpy.packbits(axis=1)``
(784 pixels -> 98 bytes).  :func:`load_binarized_mnist` unpacks them into ``(N, 784)`` tensors.
Nothing is ever downloaded.
"""
import importlib.resources
import os
import zipfile
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BinarizedMNIST", "load_binarized_mnist", "default_path", "SPLITS", "SPLIT_SIZES", "NUM_PIXELS"]

#: The split names, in order.
SPLITS = ("train", "valid", "test")
#: Number of images in each split of the shipped file.
SPLIT_SIZES = {"train": 50000, "valid": 10000, "test": 10000}
#: Pixels per image (28 x 28).
NUM_PIXELS = 784
_PACKED = (NUM_PIXELS + 7) // 8


class BinarizedMNIST(NamedTuple):
    """The three splits of binarized MNIST, each a ``(N, 784)`` tensor of 0/1 values."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def default_path():
    """Return the path of the binarized MNIST file embedded in the package.

    Example:
        >>> os.path.basename(str(default_path()))
        'binarized_mnist.npz'
    """
    return importlib.resources.files("pyro_nfvi.datasets").joinpath("data", "binarized_mnist.npz")


def _unpack(name, array, path, size=None):
    """Check one packed split and return it unpacked as a ``(N, 784)`` ``uint8`` array of 0/1.

    ``size`` is the number of rows expected (``None``: any ``N >= 1``).
    """
    if array.dtype != np.uint8:
        raise ValueError(f"array {name!r} in {path} must have dtype uint8 (packed bits), got {array.dtype}")
    if array.ndim != 2 or array.shape[1] != _PACKED or array.shape[0] == 0:
        raise ValueError(
            f"array {name!r} in {path} must have shape (N, {_PACKED}) with N >= 1 "
            f"(784 pixels packed with numpy.packbits(axis=1)), got {array.shape}"
        )
    if size is not None and array.shape[0] != size:
        raise ValueError(
            f"array {name!r} in {path} has {array.shape[0]} images, expected {size} (the split sizes "
            f"of the static binarized MNIST are {SPLIT_SIZES}); the file is truncated or another data "
            "set: use the shipped file (path=None), or pass sizes=None to load a file of other sizes"
        )
    return np.unpackbits(array, axis=1)[:, :NUM_PIXELS]


def _open(path):
    """``np.load(path)`` as an ``NpzFile``, with errors that say what the file should be."""
    expected = "a binarized MNIST file is an .npz archive of uint8 arrays 'train', 'valid', 'test'"
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError:
        # numpy's message for a file that is neither .npy nor .npz suggests allow_pickle=True: never
        raise ValueError(f"{path} is not an .npz file (numpy cannot read it as an array archive); {expected}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        # np.load raises OSError/BadZipFile/EOFError for truncated or non-npz files; a missing file is
        # reported before we get here.
        raise ValueError(f"{path} is not a readable .npz file: {err}; {expected}") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array ({type(npz).__name__}, a .npy file?); {expected}")
    return npz


def _read(path, splits, sizes):
    """Read and validate the requested splits from an ``.npz`` file at ``path``."""
    try:
        with _open(path) as npz:
            missing = [s for s in splits if s not in npz.files]
            if missing:
                raise KeyError(missing)
            return {s: _unpack(s, npz[s], path, None if sizes is None else sizes[s]) for s in splits}
    except KeyError as err:
        raise ValueError(
            f"{path} has no array(s) {err.args[0]!r}: a binarized MNIST file must contain the "
            f"arrays {list(SPLITS)}"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from err


def load_binarized_mnist(split=None, path=None, dtype=torch.float32, sizes=SPLIT_SIZES):
    """Load the statically binarized MNIST as ``(N, 784)`` tensors of 0/1 pixels.

    Reference: Larochelle & Murray, *The Neural Autoregressive Distribution Estimator*, AISTATS 2011
    (the fixed binarization used by Rezende & Mohamed 2015 and most VAE papers).

    Args:
        split (str or None): ``"train"``, ``"valid"`` or ``"test"`` to return that split only;
            ``None`` (default) returns all three as a :class:`BinarizedMNIST` named tuple.
        path (str or os.PathLike or None): an ``.npz`` file of the same format (``uint8`` arrays
            ``train``/``valid``/``test`` of shape ``(N, 98)``, made with ``numpy.packbits(axis=1)``
            from 784 pixels); default: the copy shipped inside the package.
        dtype (torch.dtype): dtype of the returned tensors (default ``torch.float32``).
        sizes (dict or None): the number of images each split must have; default
            :data:`~pyro_nfvi.datasets.SPLIT_SIZES` (the shipped data: a truncated copy is refused); ``None`` accepts any
            number (e.g. a small file of the same format made for a test).

    Returns:
        BinarizedMNIST or torch.Tensor: ``train`` (50000, 784), ``valid`` (10000, 784) and
        ``test`` (10000, 784) for the shipped file, or the one requested split.

    Raises:
        ValueError: on an unknown ``split``, an unreadable file, a missing array or a wrong
            shape/dtype/size, a text file or a ``.npy`` file (the message names the array and the
            file and says what was expected).
        FileNotFoundError: if ``path`` does not exist.

    Example:
        >>> test = load_binarized_mnist("test")
        >>> test.shape, test.dtype
        (torch.Size([10000, 784]), torch.float32)
        >>> bool(((test == 0) | (test == 1)).all())
        True
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    if sizes is not None and (not isinstance(sizes, dict) or not all(s in sizes for s in SPLITS)):
        raise TypeError(f"sizes must be None or a dict with the keys {list(SPLITS)}, got {sizes!r}")
    splits = SPLITS if split is None else (split,)
    if path is None:
        with importlib.resources.as_file(default_path()) as p:
            arrays = _read(p, splits, sizes)
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"binarized MNIST file not found: {path}")
        arrays = _read(path, splits, sizes)
    tensors = {s: torch.from_numpy(a).to(dtype) for s, a in arrays.items()}
    if split is not None:
        return tensors[split]
    return BinarizedMNIST(**tensors)
