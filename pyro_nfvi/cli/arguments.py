"""Argument types and checks shared by the ``nfvi`` subcommands (run before any work starts)."""
import argparse
import json
import os

__all__ = ["positive_int", "non_negative_int", "positive_float", "json_object", "check_device", "check_output_path",
           "check_output_folder"]


def positive_int(text):
    """``argparse`` type: an integer >= 1 (``--samples 0`` is refused with a clear message)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    """``argparse`` type: an integer >= 0 (``--warmup -1`` is refused with a clear message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text):
    """``argparse`` type: a finite number > 0 (``--lr 0`` is refused with a clear message)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def json_object(text):
    """``argparse`` type: a JSON object (``'{"stable": true}'``), returned as a ``dict``.

    Example:
        >>> json_object('{"stable": true}')
        {'stable': True}
    """
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"stable\": true}}', got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"stable\": true}}', got {text!r}")
    return value


def check_output_path(option, path):
    """Raise a ``ValueError`` unless ``path`` can be written (checked before a long fit, not after)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable; choose another path")
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name such as {os.path.join(path, 'demo.png')}")


def check_output_folder(option, path):
    """Create the report folder ``path`` (and its parents) now, or raise a ``ValueError`` naming ``option``."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} is a file; give a folder for the report")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot create the folder ({err.strerror}); choose another path") from err
    if not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path}: the folder is not writable; choose another path")


def check_device(option, name):
    """Return ``torch.device(name)``, or raise a ``ValueError`` naming ``option`` if it is malformed or absent here.

    Example:
        >>> check_device("--device", "cpu")
        device(type='cpu')
        >>> check_device("--device", "gpu")
        Traceback (most recent call last):
            ...
        ValueError: --device gpu: not a torch device; use cpu, cuda or cuda:N
    """
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{option} {name}: not a torch device; use cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{option} {name}: CUDA is not available here (torch {torch.__version__}, "
                f"{'built without CUDA' if torch.version.cuda is None else 'no GPU found'}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: there are {torch.cuda.device_count()} CUDA devices; use cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ValueError(f"{option} {name}: only cpu and cuda are supported")
    return device
