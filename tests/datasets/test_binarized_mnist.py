"""Tests of the shipped binarized MNIST and its loader."""
import numpy as np
import pytest
import torch

from pyro_nfvi.datasets import SPLIT_SIZES, BinarizedMNIST, load_binarized_mnist
from pyro_nfvi.datasets.mnist import default_path


@pytest.fixture(scope="module")
def mnist():
    return load_binarized_mnist()


def test_shapes_and_values(mnist):
    assert isinstance(mnist, BinarizedMNIST)
    for name, n in [("train", 50000), ("valid", 10000), ("test", 10000)]:
        x = getattr(mnist, name)
        assert x.shape == (n, 784) == (SPLIT_SIZES[name], 784)
        assert x.dtype == torch.float32
        assert bool(((x == 0) | (x == 1)).all())


def test_pixel_means(mnist):
    assert round(mnist.train.double().mean().item(), 4) == 0.1306
    assert round(mnist.test.double().mean().item(), 4) == 0.1325
    # the splits are different images, not copies
    assert not torch.equal(mnist.valid[:100], mnist.test[:100])


def test_single_split_and_dtype(mnist):
    test = load_binarized_mnist("test", dtype=torch.float64)
    assert test.dtype == torch.float64
    assert torch.equal(test.float(), mnist.test)


def _packed(n, seed):
    bits = np.random.default_rng(seed).integers(0, 2, size=(n, 784), dtype=np.uint8)
    return bits, np.packbits(bits, axis=1)


def test_fake_file_via_path(tmp_path):
    arrays, bits = {}, {}
    for i, (name, n) in enumerate([("train", 5), ("valid", 3), ("test", 4)]):
        bits[name], arrays[name] = _packed(n, i)
    path = tmp_path / "fake.npz"
    np.savez(path, **arrays)
    data = load_binarized_mnist(path=path, sizes=None)
    for name in ("train", "valid", "test"):
        assert torch.equal(getattr(data, name), torch.from_numpy(bits[name]).float())
    assert load_binarized_mnist("valid", path=str(path), sizes=None).shape == (3, 784)


def test_missing_array_is_named(tmp_path):
    path = tmp_path / "nokey.npz"
    np.savez(path, train=_packed(2, 0)[1], test=_packed(2, 1)[1])
    with pytest.raises(ValueError, match="valid"):
        load_binarized_mnist(path=path, sizes=None)
    # a split that is present still loads
    assert load_binarized_mnist("train", path=path, sizes=None).shape == (2, 784)


def test_wrong_shape_and_dtype_are_named(tmp_path):
    good = _packed(2, 0)[1]
    path = tmp_path / "shape.npz"
    np.savez(path, train=good, valid=good[:, :50], test=good)
    with pytest.raises(ValueError, match=r"'valid'.*\(2, 50\)"):
        load_binarized_mnist(path=path, sizes=None)
    path = tmp_path / "dtype.npz"
    np.savez(path, train=good.astype(np.float32), valid=good, test=good)
    with pytest.raises(ValueError, match="'train'.*uint8"):
        load_binarized_mnist(path=path, sizes=None)


def test_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_binarized_mnist(path=corrupt)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_binarized_mnist(path=tmp_path / "absent.npz")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_binarized_mnist("validation")
    with pytest.raises(TypeError, match="dtype"):
        load_binarized_mnist("test", dtype="float32")


def test_truncated_copy_of_the_shipped_file_is_refused(tmp_path):
    # a valid .npz cut to 10 test rows used to load as if it were the shipped data
    with np.load(str(default_path())) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["test"] = arrays["test"][:10]
    path = tmp_path / "cut.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"'test' in .*cut.npz has 10 images, expected 10000.*sizes=None"):
        load_binarized_mnist(path=path)
    with pytest.raises(ValueError, match="has 10 images, expected 10000"):
        load_binarized_mnist("test", path=path)
    assert load_binarized_mnist("test", path=path, sizes=None).shape == (10, 784)  # asked for
    assert load_binarized_mnist("valid", path=path).shape == (10000, 784)  # an intact split loads
    with pytest.raises(TypeError, match="sizes must be None or a dict"):
        load_binarized_mnist(sizes=10)


def test_text_and_npy_files_get_a_clear_error(tmp_path):
    text = tmp_path / "mnist.txt"
    text.write_text("0 1 0 1\n1 0 1 0\n")
    with pytest.raises(ValueError, match=r"mnist.txt is not an .npz file.*'train', 'valid', 'test'") as info:
        load_binarized_mnist(path=text)
    assert "pickle" not in str(info.value)  # numpy's advice to load pickles unsafely is not repeated
    npy = tmp_path / "train.npy"
    np.save(npy, _packed(3, 0)[1])
    with pytest.raises(ValueError, match=r"train.npy holds a single array.*\.npz archive"):
        load_binarized_mnist(path=npy)
