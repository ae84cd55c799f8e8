"""Small runtime helpers shared by the core: device choice, CPU threads, cache folder, seeded generators, stable hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch


def best_device(requested: str | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1", "mps"), else CUDA when present, else the CPU."""
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for, but CUDA is not available here; use --device cpu")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device | str) -> str:
    """Where work runs, in words a table can name: ``cuda:1 (NVIDIA H200)``, or ``cpu``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return dev.type


THREADS_ENV = "BDENSE_NUM_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_threads() -> int:
    """Apply ``$BDENSE_NUM_THREADS`` (torch's intra-op CPU threads in this process) where it is set; returns the
    number in use.

    Left alone, every process uses every core, and processes that share a host (study workers, a benchmark beside
    them) each run an OpenMP pool of all cores: their CPU work contends for every core, and the threads that
    queue GPU work wait. ``study/run.py --workers N`` gives each worker its share, cores // N, unless this is set.
    Raises ValueError naming the fix for a value that is not a whole number >= 1."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: give a whole number of CPU threads, 1 or more")
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return torch.get_num_threads()


def cache_dir(kind: str, root: str | os.PathLike | None = None) -> Path:
    """``root/kind``; root defaults to ``$BDENSE_CACHE_DIR`` or ``~/.cache/bdense-study``."""
    base = Path(root or os.environ.get("BDENSE_CACHE_DIR") or Path.home() / ".cache" / "bdense-study")
    path = base / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def to_jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def stable_hash(obj, length: int = 12) -> str:
    """A short hash of a (nested) dataclass/JSON value, stable across runs and machines."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
