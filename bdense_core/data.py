"""Datasets as one uint8 tensor: Fashion-MNIST, CIFAR-10, a folder of images, or procedural shapes for tests.

``load_images(DataConfig(...))`` returns an ``ImageSet`` holding uint8 ``[N, C, H, W]`` images (C is 1 or 3).
Fashion-MNIST is read offline from Debian's ``dataset-fashion-mnist`` files when they are installed; CIFAR-10
needs internet for its first download. Subsets are chosen by a seed, so the same config always gives the
same images. Models see floats in [-1, 1] (``ImageSet.batch``, ``as_float``); FID sees uint8 (``to_uint8``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F

FIXED_DATASETS = ("fashion-mnist", "cifar10")
VALID_NAMES = ("fashion-mnist", "cifar10", "folder:PATH", "procedural")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
)
PROCEDURAL_DEFAULT_RESOLUTION = 16
PROCEDURAL_DEFAULT_COUNT = 512
PROCEDURAL_VERSION = 1  # bump when the generator changes, so cached statistics are not reused
_PROCEDURAL_SHAPES = 4  # shape slots per image; each slot is drawn with probability 0.75 (the first always)
_PROCEDURAL_PARAMS = 7  # per slot: present, kind, cx, cy, size, aspect, brightness


class DatasetError(ValueError):
    """A dataset cannot be configured or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion-mnist"  # "fashion-mnist" | "cifar10" | "folder:PATH" | "procedural"
    split: str = "train"  # "train" | "test" (folder/procedural: ignored)
    n_images: int | None = None  # None = all; otherwise a deterministic subset chosen by `seed`
    seed: int = 0
    root: str | None = None  # download/cache dir; default: $BDENSE_DATA_DIR or ~/.cache/bdense-study/data
    resolution: int | None = None  # None = the dataset's own (32; procedural 16); only procedural/folder may set it

    def __post_init__(self):
        if not isinstance(self.name, str) or not (
            self.name in FIXED_DATASETS or self.name == "procedural" or self.name.startswith("folder:")
        ):
            raise DatasetError(f"unknown dataset {self.name!r}; use one of {', '.join(VALID_NAMES)}")
        if self.name.startswith("folder:") and not self.name[len("folder:"):].strip():
            raise DatasetError("dataset 'folder:' has no path; write it as 'folder:/path/to/images'")
        if self.split not in SPLITS:
            raise DatasetError(f"unknown split {self.split!r}; use 'train' or 'test'")
        if self.n_images is not None and (isinstance(self.n_images, bool) or not isinstance(self.n_images, int)):
            raise DatasetError(f"n_images must be an integer or None, got {self.n_images!r}")
        if self.n_images is not None and self.n_images < 1:
            raise DatasetError(f"n_images must be at least 1 (or None for all images), got {self.n_images}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DatasetError(f"seed must be an integer, got {self.seed!r}")
        if self.resolution is not None:
            if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 4:
                raise DatasetError(f"resolution must be an integer >= 4 or None, got {self.resolution!r}")
            if self.name in FIXED_DATASETS and self.resolution != 32:
                raise DatasetError(
                    f"{self.name} is fixed at 32x32; leave resolution=None (only procedural and folder: resize)"
                )

    @property
    def folder(self) -> Path | None:
        """The folder of a ``folder:PATH`` dataset, else None."""
        return Path(self.name[len("folder:"):]).expanduser() if self.name.startswith("folder:") else None

    def data_root(self) -> Path:
        """Where downloads live: ``root``, else ``$BDENSE_DATA_DIR``, else ``~/.cache/bdense-study/data``."""
        base = self.root or os.environ.get("BDENSE_DATA_DIR") or Path.home() / ".cache" / "bdense-study" / "data"
        return Path(base).expanduser()


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W], C in {1, 3}
    name: str

    def __post_init__(self):
        x = self.images
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise DatasetError(f"ImageSet needs a uint8 tensor [N, C, H, W], got {got}; convert with to_uint8")
        if x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or x.shape[0] < 1:
            raise DatasetError(f"ImageSet needs N >= 1 square images with 1 or 3 channels, got {tuple(x.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[2])

    def batch(self, n: int, generator: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
        """``n`` images drawn uniformly with replacement (indices from ``generator``), float32 in [-1, 1]."""
        if n < 1:
            raise ValueError(f"batch size must be at least 1, got {n}")
        idx = torch.randint(len(self), (n,), generator=generator, device=generator.device)
        picked = self.images[idx.to(self.images.device)]
        return _to_float(picked, device)

    def as_float(self, device: torch.device | str | None = None) -> torch.Tensor:
        """All images as float32 in [-1, 1]."""
        return _to_float(self.images, device)


def _to_float(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device if device is not None else images.device).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any float dtype) to uint8 by ``((x + 1) * 127.5).round().clamp(0, 255)``."""
    if not torch.is_floating_point(x):
        raise ValueError(f"to_uint8 expects float images in [-1, 1], got {x.dtype}; uint8 images need no conversion")
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def dataset_key(config: DataConfig) -> str:
    """A short stable string naming exactly which images ``config`` loads (for cache keys and file names)."""
    count = "all" if config.n_images is None else f"n{config.n_images}"
    if config.name in FIXED_DATASETS:
        seed = "" if config.n_images is None else f"-s{config.seed}"
        return f"{config.name}-{config.split}-{count}{seed}"
    if config.name == "procedural":
        res = config.resolution or PROCEDURAL_DEFAULT_RESOLUTION
        n = config.n_images or PROCEDURAL_DEFAULT_COUNT
        return f"procedural-v{PROCEDURAL_VERSION}-r{res}-n{n}-s{config.seed}"
    folder = config.folder
    files = _folder_files(folder)
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"\0{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    seed = "" if config.n_images is None else f"-s{config.seed}"
    return f"folder-{h.hexdigest()[:12]}-r{config.resolution or 32}-{count}{seed}"


def load_images(config: DataConfig) -> ImageSet:
    """Load the images ``config`` names (a seeded subset when ``n_images`` is set)."""
    if config.name == "procedural":
        n = config.n_images or PROCEDURAL_DEFAULT_COUNT
        res = config.resolution or PROCEDURAL_DEFAULT_RESOLUTION
        return ImageSet(procedural_images(n, res, config.seed), dataset_key(config))
    if config.name == "fashion-mnist":
        images = _load_fashion_mnist(config)
    elif config.name == "cifar10":
        images = _load_cifar10(config)
    else:
        return ImageSet(_load_folder(config), dataset_key(config))
    return ImageSet(images[_subset(len(images), config)], dataset_key(config))


def _subset(total: int, config: DataConfig) -> torch.Tensor | slice:
    """Indices of the seeded subset: ``randperm(total)[:n_images]``, sorted; all images when n_images is None."""
    if config.n_images is None:
        return slice(None)
    if config.n_images > total:
        raise DatasetError(f"{config.name} has {total} images but n_images={config.n_images}; lower n_images")
    g = torch.Generator().manual_seed(config.seed)
    return torch.randperm(total, generator=g)[: config.n_images].sort().values


# ---- Fashion-MNIST -------------------------------------------------------------------------------------------


def _load_fashion_mnist(config: DataConfig) -> torch.Tensor:
    from torchvision.datasets import FashionMNIST

    root = config.data_root()
    source = Path(os.environ.get("BDENSE_FASHION_MNIST_DIR") or DEBIAN_FASHION_MNIST)
    train = config.split == "train"
    try:
        if all((source / f).is_file() for f in FASHION_MNIST_FILES):
            _stage_fashion_mnist(source, root / "FashionMNIST" / "raw")
            ds = FashionMNIST(str(root), train=train, download=False)
        else:
            ds = FashionMNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as e:  # URLError is an OSError; torchvision wraps mirror failures in RuntimeError
        raise DatasetError(
            f"Fashion-MNIST not found in {source} and its download failed ({_first_line(e)}); "
            "run `apt-get install dataset-fashion-mnist`, set BDENSE_FASHION_MNIST_DIR, or go online"
        ) from e
    data = ds.data  # uint8 [N, 28, 28]
    return F.pad(data.unsqueeze(1), (2, 2, 2, 2), value=0).contiguous()


def _stage_fashion_mnist(source: Path, raw: Path) -> None:
    """Link the four ``.gz`` files into torchvision's ``raw/`` folder and unpack them there (atomically).

    torchvision's ``FashionMNIST`` only unpacks ``.gz`` files inside ``download()``; with ``download=False`` it
    wants the unpacked files. Unpacking to a temporary name and renaming keeps parallel workers safe.
    """
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        link = raw / name
        if not link.exists():
            try:
                link.symlink_to(source / name)
            except FileExistsError:
                pass
            except OSError:
                shutil.copyfile(source / name, link)
        target = raw / name[: -len(".gz")]
        if target.exists():
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=target.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(source / name, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.chmod(tmp, 0o644)  # mkstemp makes files private; these are plain public data
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---- CIFAR-10 ------------------------------------------------------------------------------------------------


def _load_cifar10(config: DataConfig) -> torch.Tensor:
    from torchvision.datasets import CIFAR10

    root = config.data_root()
    try:
        ds = CIFAR10(str(root), train=config.split == "train", download=True)
    except (URLError, OSError, RuntimeError) as e:
        raise DatasetError(
            f"CIFAR-10 needs internet for its first download ({_first_line(e)}); "
            f"run once online or put cifar-10-python.tar.gz in {root}"
        ) from e
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N, 32, 32, 3] -> [N, 3, 32, 32]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ---- folder:PATH ---------------------------------------------------------------------------------------------


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"image folder {str(folder)!r} does not exist; check the path in 'folder:PATH'")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(folder)!r}; put some there or fix the path"
        )
    return files


def _load_folder(config: DataConfig) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    files = _folder_files(config.folder)
    picked = _subset(len(files), config)
    files = [files[int(i)] for i in torch.arange(len(files))[picked]]
    res = config.resolution or 32
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("RGB")
        except OSError as e:
            raise DatasetError(f"cannot read image {str(f)!r} ({_first_line(e)}); remove or replace it") from e
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        if s != res:
            img = img.resize((res, res), resample=Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img, dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2]):
        images = images[:, :1].contiguous()  # every image is grey: keep one channel
    return images


# ---- procedural ----------------------------------------------------------------------------------------------


def procedural_images(n: int, resolution: int = PROCEDURAL_DEFAULT_RESOLUTION, seed: int = 0) -> torch.Tensor:
    """``n`` deterministic 1-channel images of anti-aliased discs and rectangles on a dark background.

    Each image has 1 to 4 shapes of random kind, position, size and brightness, painted in order. Parameters
    come from one ``torch.rand`` call, so the first k images do not depend on n. Returns uint8 [n, 1, R, R].
    """
    if n < 1 or resolution < 4:
        raise DatasetError(f"procedural images need n >= 1 and resolution >= 4, got n={n}, resolution={resolution}")
    g = torch.Generator().manual_seed(int(seed))
    p = torch.rand(n, _PROCEDURAL_SHAPES, _PROCEDURAL_PARAMS, generator=g)
    present = p[..., 0] < 0.75
    present[:, 0] = True
    is_disc = p[..., 1] < 0.5
    r = float(resolution)
    cx, cy = (0.15 + 0.7 * p[..., 2]) * r, (0.15 + 0.7 * p[..., 3]) * r  # centres, in pixels
    size = (0.08 + 0.17 * p[..., 4]) * r  # disc radius or rectangle half-width
    half_h = size * (0.5 + p[..., 5])  # rectangles: aspect 0.5..1.5
    bright = 0.35 + 0.65 * p[..., 6]
    coords = torch.arange(resolution, dtype=torch.float32) + 0.5
    yy, xx = coords.view(-1, 1), coords.view(1, -1)  # pixel centres
    out = torch.empty(n, 1, resolution, resolution, dtype=torch.uint8)
    for start in range(0, n, 1024):  # bounded memory for large n
        sl = slice(start, min(n, start + 1024))
        img = torch.full((sl.stop - sl.start, resolution, resolution), 0.04)
        for k in range(_PROCEDURAL_SHAPES):
            dx = xx - cx[sl, k, None, None]
            dy = yy - cy[sl, k, None, None]
            disc = torch.sqrt(dx * dx + dy * dy) - size[sl, k, None, None]
            rect = torch.maximum(dx.abs() - size[sl, k, None, None], dy.abs() - half_h[sl, k, None, None])
            dist = torch.where(is_disc[sl, k, None, None], disc, rect)  # signed distance in pixels
            cover = (0.5 - dist).clamp(0.0, 1.0) * present[sl, k, None, None]  # 1-pixel anti-aliased edge
            img = img * (1 - cover) + bright[sl, k, None, None] * cover
        out[sl, 0] = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return out
