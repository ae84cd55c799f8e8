import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from bdense_core import data as data_mod
from bdense_core.data import DataConfig, DatasetError, ImageSet, dataset_key, load_images, to_uint8

FMNIST_DIR = Path(os.environ.get("BDENSE_FASHION_MNIST_DIR") or data_mod.DEBIAN_FASHION_MNIST)
HAVE_FMNIST = all((FMNIST_DIR / f).is_file() for f in data_mod.FASHION_MNIST_FILES)
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"Fashion-MNIST idx files not in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)"
)


def _offline(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution (network disabled by the test)")


# ---- configuration errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mnist"}, r"unknown dataset 'mnist'; use one of fashion-mnist, cifar10, folder:PATH, procedural"),
        ({"name": "folder:"}, r"folder:/path/to/images"),
        ({"n_images": 0}, r"n_images must be at least 1 \(or None for all images\), got 0"),
        ({"n_images": -5}, r"n_images must be at least 1"),
        ({"split": "val"}, r"unknown split 'val'; use 'train' or 'test'"),
        ({"resolution": 28}, r"fashion-mnist is fixed at 32x32; leave resolution=None"),
        ({"name": "procedural", "resolution": 2}, r"resolution must be an integer >= 4"),
    ],
)
def test_bad_configs_raise_dataset_error_with_fix(kwargs, match):
    with pytest.raises(DatasetError, match=match) as info:
        DataConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_fixed_dataset_accepts_its_own_resolution():
    assert DataConfig(name="cifar10", resolution=32).resolution == 32


# ---- procedural ------------------------------------------------------------------------------------------------


def test_procedural_shape_range_and_determinism():
    a = load_images(DataConfig(name="procedural"))
    assert a.images.shape == (512, 1, 16, 16) and a.images.dtype == torch.uint8
    assert (len(a), a.channels, a.resolution) == (512, 1, 16)
    b = load_images(DataConfig(name="procedural"))
    c = load_images(DataConfig(name="procedural", seed=1))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    # the first k images do not depend on how many are drawn
    small = load_images(DataConfig(name="procedural", n_images=64))
    assert torch.equal(small.images, a.images[:64])
    big = load_images(DataConfig(name="procedural", n_images=10, resolution=40))
    assert big.images.shape == (10, 1, 40, 40)


def test_procedural_images_have_structure_not_noise():
    x = load_images(DataConfig(name="procedural", n_images=256, resolution=32)).images.float()[:, 0]
    background = (x <= 12).float().mean().item()
    assert 0.3 < background < 0.95, background  # dark background with shapes on it
    assert x.amax(dim=(1, 2)).min() >= 0.3 * 255  # every image has at least one bright shape
    # neighbouring pixels are strongly correlated (noise would give ~0)
    h = torch.corrcoef(torch.stack([x[:, :, :-1].flatten(), x[:, :, 1:].flatten()]))[0, 1].item()
    assert h > 0.85, h
    # anti-aliased edges: intermediate grey levels exist
    mid = ((x > 20) & (x < 80)).float().mean().item()
    assert mid > 0.005, mid


# ---- ImageSet, to_uint8, keys ---------------------------------------------------------------------------------


def test_imageset_batch_and_float_conversion():
    s = load_images(DataConfig(name="procedural", n_images=50))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    b1, b2 = s.batch(20, g1), s.batch(20, g2)
    assert b1.shape == (20, 1, 16, 16) and b1.dtype == torch.float32
    assert torch.equal(b1, b2)
    assert b1.min() >= -1 and b1.max() <= 1
    # every drawn image is one of the set's images
    flat = s.as_float().flatten(1)
    assert all(torch.any(torch.all(flat == row, dim=1)) for row in b1.flatten(1))
    assert not torch.equal(s.batch(20, g1), b1)  # the generator advances
    full = s.as_float()
    assert full.shape == (50, 1, 16, 16) and full.min() >= -1 and full.max() <= 1
    assert torch.allclose(full, s.images.float() / 127.5 - 1)
    assert torch.equal(to_uint8(full), s.images)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="to_uint8 expects float images"):
        to_uint8(torch.zeros(3, dtype=torch.uint8))


def test_imageset_rejects_wrong_tensors():
    with pytest.raises(DatasetError, match="uint8 tensor"):
        ImageSet(torch.zeros(2, 1, 8, 8), "x")
    with pytest.raises(DatasetError, match="1 or 3 channels"):
        ImageSet(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "x")


def test_dataset_key_is_stable_and_distinguishes_configs():
    keys = {
        dataset_key(DataConfig()),
        dataset_key(DataConfig(split="test")),
        dataset_key(DataConfig(n_images=100)),
        dataset_key(DataConfig(n_images=100, seed=1)),
        dataset_key(DataConfig(name="cifar10")),
        dataset_key(DataConfig(name="procedural")),
        dataset_key(DataConfig(name="procedural", resolution=32)),
    }
    assert len(keys) == 7
    assert dataset_key(DataConfig(n_images=100, seed=1)) == "fashion-mnist-train-n100-s1"
    assert dataset_key(DataConfig(root="/elsewhere")) == dataset_key(DataConfig())  # where it lives is not what it is


# ---- folder:PATH -----------------------------------------------------------------------------------------------


def _write_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    # 60x40 landscape: red | green | blue thirds; a centre crop keeps only green
    strip = np.zeros((40, 60, 3), np.uint8)
    strip[:, :10] = (255, 0, 0)
    strip[:, 10:50] = (0, 255, 0)
    strip[:, 50:] = (0, 0, 255)
    Image.fromarray(strip).save(root / "a.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "b.bmp")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "sub" / "c.png")
    Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(root / "sub" / "d.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_loads_crops_and_resizes(tmp_path):
    folder = _write_folder(tmp_path / "imgs")
    s = load_images(DataConfig(name=f"folder:{folder}"))
    assert s.images.shape == (4, 3, 32, 32) and s.images.dtype == torch.uint8
    # sorted order: a.png, b.bmp, sub/c.png, sub/d.jpg; a.png centre-cropped is pure green
    a = s.images[0].int()
    assert a[1].min() >= 250 and a[0].max() <= 5 and a[2].max() <= 5
    # b.bmp is already 32x32: loaded unchanged
    b = np.array(Image.open(folder / "b.bmp"))
    assert torch.equal(s.images[1], torch.from_numpy(b).permute(2, 0, 1))
    # the grey image is replicated into RGB because the others have colour
    assert torch.equal(s.images[2, 0], s.images[2, 1])
    small = load_images(DataConfig(name=f"folder:{folder}", resolution=16, n_images=2, seed=5))
    assert small.images.shape == (2, 3, 16, 16)
    again = load_images(DataConfig(name=f"folder:{folder}", resolution=16, n_images=2, seed=5))
    assert torch.equal(small.images, again.images)


def test_folder_of_grey_images_has_one_channel_and_key_tracks_content(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = DataConfig(name=f"folder:{folder}", resolution=20)
    s = load_images(cfg)
    assert s.images.shape == (3, 1, 20, 20)
    assert torch.equal(s.images[0, 0], torch.from_numpy(np.array(Image.open(folder / "0.png"))))
    key = dataset_key(cfg)
    assert dataset_key(cfg) == key
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / "3.png")
    assert dataset_key(cfg) != key


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; check the path"):
        load_images(DataConfig(name=f"folder:{tmp_path / 'missing'}"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images .* put some there or fix the path"):
        load_images(DataConfig(name=f"folder:{tmp_path / 'empty'}"))
    folder = _write_folder(tmp_path / "four")
    with pytest.raises(DatasetError, match="has 4 images but n_images=10; lower n_images"):
        load_images(DataConfig(name=f"folder:{folder}", n_images=10))


# ---- CIFAR-10 ----------------------------------------------------------------------------------------------------


def test_cifar10_offline_gives_dataset_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", _offline)
    with pytest.raises(DatasetError, match="CIFAR-10 needs internet for its first download") as info:
        load_images(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(info.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg and "\n" not in msg


def test_cifar10_layout_and_subset(tmp_path, monkeypatch):
    """torchvision's CIFAR10 replaced by a stand-in with the same .data layout: checks channel order and subsets."""
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            n = 50 if train else 10
            self.data = np.zeros((n, 32, 32, 3), np.uint8)
            self.data[..., 0], self.data[..., 1], self.data[..., 2] = 10, 20, 30
            self.data[:, 0, 0, 0] = np.arange(n)  # tag each image

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    s = load_images(DataConfig(name="cifar10", root=str(tmp_path)))
    assert s.images.shape == (50, 3, 32, 32) and s.channels == 3
    assert s.images[:, 1].eq(20).all() and s.images[:, 2].eq(30).all() and s.images[3, 0, 1, 1] == 10
    sub = load_images(DataConfig(name="cifar10", root=str(tmp_path), n_images=7, seed=4))
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(4))[:7].sort().values
    assert sub.images[:, 0, 0, 0].tolist() == expected.tolist()
    assert load_images(DataConfig(name="cifar10", split="test", root=str(tmp_path))).images.shape[0] == 10


# ---- Fashion-MNIST -----------------------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_from_debian_files(tmp_path):
    train = load_images(DataConfig(root=str(tmp_path)))
    assert train.images.shape == (60000, 1, 32, 32) and train.images.dtype == torch.uint8
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    x = train.images
    border = torch.cat([x[..., :2, :].flatten(), x[..., -2:, :].flatten(), x[..., :2].flatten(), x[..., -2:].flatten()])
    assert border.max() == 0  # 2-pixel black padding
    assert x.max() == 255 and 50 < x.float().mean() < 65  # Fashion-MNIST's mean intensity is about 72 at 28x28
    test = load_images(DataConfig(split="test", root=str(tmp_path)))
    assert test.images.shape == (10000, 1, 32, 32)
    # seeded subsets are exactly randperm(N)[:n], sorted
    sub = load_images(DataConfig(n_images=300, seed=7, root=str(tmp_path)))
    idx = torch.randperm(60000, generator=torch.Generator().manual_seed(7))[:300].sort().values
    assert torch.equal(sub.images, x[idx])
    assert torch.equal(sub.images, load_images(DataConfig(n_images=300, seed=7, root=str(tmp_path))).images)
    assert not torch.equal(sub.images, load_images(DataConfig(n_images=300, seed=8, root=str(tmp_path))).images)
    with pytest.raises(DatasetError, match="has 10000 images but n_images=10001"):
        load_images(DataConfig(split="test", n_images=10001, root=str(tmp_path)))


def test_fashion_mnist_absent_and_offline(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    (tmp_path / "nothing").mkdir()
    monkeypatch.setenv("BDENSE_FASHION_MNIST_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", _offline)
    with pytest.raises(DatasetError, match=r"apt-get install dataset-fashion-mnist") as info:
        load_images(DataConfig(root=str(tmp_path / "root")))
    assert "\n" not in str(info.value) and "go online" in str(info.value)
