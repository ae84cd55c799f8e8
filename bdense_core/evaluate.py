"""FID and KID of a teacher or a distilled student against a dataset's reference statistics."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .data import DataConfig, dataset_key, load_images, to_uint8
from .fid import FIDEvaluator
from .runtime import best_device, cache_dir


def make_evaluator(
    data: DataConfig,
    n_reference: int,
    device: str | torch.device | None = None,
    inception_path: str | Path | None = None,
    root: str | Path | None = None,
    batch_size: int = 250,
) -> FIDEvaluator:
    """An evaluator whose reference is ``n_reference`` images of ``data`` (statistics cached on disk)."""
    device = best_device(str(device) if device else None)
    ref_config = DataConfig(**{**data.__dict__, "n_images": n_reference})
    images = load_images(ref_config).images
    return FIDEvaluator(
        images, key=dataset_key(ref_config), device=device, inception_path=inception_path,
        cache_dir=cache_dir("fid", root), batch_size=batch_size,
    )


def evaluate(model, evaluator: FIDEvaluator, n_samples: int, seed: int = 2024,
             batch_size: int | None = None, fast: bool | None = None) -> dict[str, float]:
    """Sample ``n_samples`` images from ``model`` (anything with ``.sample(n, seed, batch_size, fast)``, e.g. a
    Teacher or a DistillResult) and score them.

    ``fast``: the model's fast path on CUDA (None: the model's default, on; False: eager). ``batch_size`` is the
    eager path's batch (None: the model's default); the fast path uses its own.

    Returns ``fid``, ``kid``, ``n`` and the sampling throughput ``samples_per_s``.
    """
    if n_samples < 2:
        raise ValueError(f"FID needs at least 2 samples, got {n_samples}")
    start = time.perf_counter()
    images = model.sample(n_samples, seed=seed, batch_size=batch_size, fast=fast)
    if images.is_cuda:
        torch.cuda.synchronize()
    sample_s = time.perf_counter() - start
    scores = evaluator(to_uint8(images))
    scores["samples_per_s"] = n_samples / sample_s if sample_s > 0 else float("nan")
    return scores
