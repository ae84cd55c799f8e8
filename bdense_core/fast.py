"""The fast path on CUDA: compiled networks (torch.compile with CUDA graphs), bf16 autocast, channels_last.

One switch decides it everywhere: :func:`use_fast` is true on CUDA unless the caller passes ``fast=False``
(``SFDConfig.fast``, the study's CLI flag); the CPU always runs the eager path.

Compilation is paid once per process: every compiled object here is cached by what its graph depends on
(architecture, batch, device), holds persistent parameter buffers, and takes a new model by copying that
model's weights into those buffers. CUDA graphs need exactly that (fixed addresses, fixed shapes), and the
networks here are small (a few million parameters at 32 px), so launch overhead, not arithmetic, is what the
eager path pays: ``mode="reduce-overhead"`` (CUDA graph trees) removes it, and Inductor fuses the pointwise
work and lays convolutions out channels_last. ``BDENSE_COMPILE_MODE`` selects another torch.compile mode
(e.g. ``max-autotune-no-cudagraphs``) without touching the code, for diagnosis on a new machine, and
``BDENSE_FORCE_LAYOUT_OPT=1`` forces Inductor's channels-last layout for graphs it would leave NCHW. Where torch's
CUDA-graph trees fail in a training (an open torch bug), :func:`without_cudagraphs` records the graphs again and trains
again; where they fail twice in one training it moves the process to ``default`` mode (the training loops of SFD and
PD run inside it).

A compiled graph's outputs live in memory that its next replay overwrites: everything here hands back
clones, so callers keep what they get.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .edm import EDMPrecond
from .networks import UNet, select_branches

# Batch of the compiled sampler: teacher sampling, student sampling and trajectory banks all run through one
# graph of this batch (the last batch is padded), so a worker compiles the sampler once.
SAMPLE_BATCH = 1000


def use_fast(device: torch.device | str, fast: bool | None = None) -> bool:
    """Whether the fast path runs: on CUDA unless ``fast`` is False; never on another device."""
    return torch.device(device).type == "cuda" and fast is not False


# Why this process compiles without CUDA graphs from now on (None: it has not given them up); see without_cudagraphs.
_CUDAGRAPHS_GIVEN_UP: str | None = None

# torch's CUDA-graph-tree invariant failure (pytorch/pytorch#154306, open): a graph's recorded input liveness does
# not hold at a later replay, and torch raises instead of re-recording. Seen on H200s in PD (session 14) and in
# SFD (session 15) at the start of a new engine's training, and in SFD after records had gone out: 7 s into a
# worker's third group (session 17), about 140 iterations into a worker's first (session 18).
CUDAGRAPH_TREE_ERROR = "graph recording observed an input tensor deallocate"


def compile_mode() -> str:
    """torch.compile's mode for the fast path: ``reduce-overhead`` (CUDA graphs) unless BDENSE_COMPILE_MODE says,
    or ``default`` (no CUDA graphs) once this process has given CUDA graphs up (:func:`without_cudagraphs`)."""
    mode = os.environ.get("BDENSE_COMPILE_MODE", "reduce-overhead")
    if _CUDAGRAPHS_GIVEN_UP is not None and "reduce-overhead" in mode:
        return "default"
    return mode


@contextmanager
def no_gc():
    """Python's automatic garbage collection held off for the block (the state before it restored after).

    The compiled calls and the backward passes of the training and sampling loops run inside it. CUDA-graph trees
    record which earlier graph outputs die while a graph is being recorded and require the same at every replay
    (else the error that :func:`without_cudagraphs` survives). A collection that the interpreter happens to start
    during a recording can free a tensor that only a reference cycle held; a replay, which allocates far fewer
    Python objects, then finds it alive. vLLM and Triton hold collection off during graph capture for such reasons.
    Whether that is what triggered the error on the H200s is not shown (it cannot be reproduced on demand); the
    window costs two interpreter calls a step, and the loops' other work (optimiser, records, callbacks) still runs
    with collection on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def cudagraphs_given_up() -> str | None:
    """Why this process stopped compiling with CUDA graphs, or None while it still does."""
    return _CUDAGRAPHS_GIVEN_UP


def without_cudagraphs(train, callbacks):
    """``train(hooks)``, run again if torch's CUDA-graph trees fail in it (CUDAGRAPH_TREE_ERROR): first with CUDA
    graphs recorded afresh, and if they fail again in the same training, without CUDA graphs.

    ``hooks`` are ``callbacks`` (None stays None), each counting its calls, so that a run after a failure, which
    trains from the start again, delivers to each callback only the calls no earlier run had delivered: each step's
    record reaches its callers once (the first run's for the steps it reached, the next run's after; the runs differ
    only by the compiled kernels' rounding: same seed, draws and schedule), and a call whose callback raised (a pruned
    student) raises the same exception at the same call, so the student stops where it stopped. Session 17 (2x H200)
    met the error about 7 s into a worker's third group, after records had gone out; it was then the trial's error
    and three finished-looking trials failed.

    The first failure resets torch's compiler state (``torch.compiler.reset()``, which clears the CUDA-graph trees
    with Dynamo's caches): the engines stay, and their next calls compile again, mostly from the compile caches that
    the first compilation filled, and record new graphs. The mode without CUDA graphs is slow: session 18's NFE-3
    group trained at 238-254 ms an iteration in ``default`` mode against 92-97 ms with CUDA graphs for the other
    GPU's group (one H200 each). A second failure in the same training moves the process to ``default`` mode for
    good (every engine is keyed by :func:`compile_mode`, so new ones are built: one more compilation); session 14's
    process met the error in three trainings in a row, before any retry existed. Each of these says so on stderr.
    Any other error, or the same error in a process without CUDA graphs, propagates: the trial fails as before.
    """
    global _CUDAGRAPHS_GIVEN_UP
    calls = [0] * len(callbacks)  # this run's calls of each hook
    skip = [0] * len(callbacks)  # a run after a failure: the calls earlier runs delivered (all of their calls)
    raised: list[dict] = [{} for _ in callbacks]  # call index -> what the callback raised there

    def told(i, fn):
        def hook(*args):
            k = calls[i]
            calls[i] += 1
            if k < skip[i]:  # a run after a failure: this call already reached its caller
                if k in raised[i]:
                    raise raised[i][k]
                return None
            try:
                return fn(*args)
            except Exception as e:
                raised[i][k] = e
                raise
        return None if fn is None else hook

    hooks = [told(i, fn) for i, fn in enumerate(callbacks)]
    failures = 0
    while True:
        try:
            return train(hooks)
        except RuntimeError as e:
            if CUDAGRAPH_TREE_ERROR not in str(e) or "reduce-overhead" not in compile_mode():
                raise
        failures += 1
        skip[:] = [max(s, c) for s, c in zip(skip, calls)]
        calls[:] = [0] * len(callbacks)
        why = f"torch's CUDA-graph trees failed ({CUDAGRAPH_TREE_ERROR}; pytorch/pytorch#154306)"
        if failures == 1:
            torch.compiler.reset()
            what = ("this process records its CUDA graphs again (torch.compiler.reset(): its graphs compile again, "
                    "from the compile caches where they can)")
        else:
            _CUDAGRAPHS_GIVEN_UP = f"{why} twice in one training"
            what = ("twice in one training: this process trains on without CUDA graphs (compile mode 'default': "
                    "Inductor's kernels launched one by one, slower)")
        print(f"fast path: {why}; {what}; the training that failed starts again ({sum(skip)} record(s) its "
              "callers already had are not delivered twice)", file=sys.stderr, flush=True)


def force_layout_opt() -> bool:
    """Whether Inductor's channels-last layout optimisation is forced (``BDENSE_FORCE_LAYOUT_OPT=1``).

    Inductor declines it for the UNet's training graph ("some convolutions have smaller out_channel": the decoder's
    skip concatenations), so cuDNN converts NCHW to NHWC around each bf16 convolution: 10 % of a training step's
    device time on the H100 (bench_core's profile, session 7). Off by default until a benchmark shows it pays."""
    return os.environ.get("BDENSE_FORCE_LAYOUT_OPT", "0") == "1"


def compile_options() -> dict:
    """torch.compile's options for the fast path: those of :func:`compile_mode` (``torch._inductor.list_mode_options``,
    what ``mode=`` applies), plus the forced layout optimisation where :func:`force_layout_opt` says."""
    from torch._inductor import list_mode_options

    options = dict(list_mode_options(compile_mode(), dynamic=False))
    if force_layout_opt():
        options["force_layout_optimization"] = True
    return options


def compiled(module: nn.Module):
    """``module`` compiled for the fast path (static shapes: one graph per input shape). Shapes being static,
    cuDNN times its convolution algorithms once per shape and keeps the fastest (``cudnn.benchmark``)."""
    torch.backends.cudnn.benchmark = True
    portable_compile_cache()
    return torch.compile(module, options=compile_options(), dynamic=False)


# torch.compile's portable cache (torch.compiler.save_cache_artifacts / load_cache_artifacts): with
# BDENSE_COMPILE_CACHE=DIR a process loads every DIR/*.bin into its compile caches before its first compile and, when
# it exits, saves what it compiled or loaded into DIR/new/ (one file a process: a warm process saves again what it
# used, so the files of one run are a complete set). The lent GPU machines start empty every session; carrying the
# last run's DIR/new/ to the next machine's DIR spares it compiling the same graphs again. torch keys each artifact
# by its graph, options, versions and device, so an artifact of another torch or GPU is a miss, not an error.
COMPILE_CACHE_ENV = "BDENSE_COMPILE_CACHE"
_COMPILE_CACHE_LOADED: list[str] | None = None  # the files this process loaded (None: not looked yet)


def portable_compile_cache() -> list[str]:
    """Load ``$BDENSE_COMPILE_CACHE/*.bin`` once per process (a file torch refuses: one line on stderr, its graphs
    compile as usual) and save this process's artifacts at exit (:func:`flush_compile_cache`). Returns the names
    of the files loaded; nothing when the variable is unset."""
    global _COMPILE_CACHE_LOADED
    folder = os.environ.get(COMPILE_CACHE_ENV)
    if _COMPILE_CACHE_LOADED is not None or not folder:
        return _COMPILE_CACHE_LOADED or []
    _COMPILE_CACHE_LOADED = []
    for f in sorted(Path(folder).glob("*.bin")):
        try:  # torch logs a refused file and returns None (a checksum that does not match)
            why = None if torch.compiler.load_cache_artifacts(f.read_bytes()) is not None else "torch refused it"
        except Exception as e:  # noqa: BLE001 - a cache is an optimisation: compile instead
            why = f"{type(e).__name__}: {e}"
        if why is None:
            _COMPILE_CACHE_LOADED.append(f.name)
        else:
            print(f"compile cache: {f} not loaded ({why}); its graphs compile again", file=sys.stderr)
    atexit.register(flush_compile_cache)
    return _COMPILE_CACHE_LOADED


def flush_compile_cache() -> Path | None:
    """Save this process's compile artifacts into ``$BDENSE_COMPILE_CACHE/new/`` (:func:`save_compile_cache`): at exit,
    and called directly by a process that ends with ``os._exit``, as a study's worker processes do (it runs no exit
    handlers). None when there is nothing to save or no cache was asked for."""
    folder = os.environ.get(COMPILE_CACHE_ENV)
    if _COMPILE_CACHE_LOADED is None or not folder:
        return None
    return save_compile_cache(Path(folder) / "new")


def save_compile_cache(folder) -> Path | None:
    """This process's compile artifacts (compiled or loaded) as ``folder/<pid>.bin``; None when it has none."""
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.bin"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(saved[0])
    os.replace(tmp, path)
    return path


def new_step() -> None:
    """Tell CUDA graph trees that a new iteration begins (outputs of earlier replays may then be reused)."""
    if "reduce-overhead" in compile_mode():
        torch.compiler.cudagraph_mark_step_begin()


class Endpoint(nn.Module):
    """``denoiser(x, sigma)`` (endpoint branch, fp32 out), channels_last, the network under bf16 autocast if ``bf16``."""

    def __init__(self, denoiser: EDMPrecond, bf16: bool = True):
        super().__init__()
        self.denoiser, self.bf16 = denoiser, bf16

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return self.denoiser(x.contiguous(memory_format=torch.channels_last), sigma)


class SamplingEngine:
    """A compiled one-branch denoiser of one architecture at one batch size, persistent for the process.

    ``load(denoiser)`` copies the endpoint branch of any denoiser of that architecture (a teacher, or a K-branch
    student: its branch K) into the engine's own weights; calling the engine then equals calling ``denoiser``
    (within bf16 rounding; with ``bf16=False`` the network runs in fp32, TF32 where torch allows it). Inputs must
    have exactly ``batch`` rows (pad the last batch). A module is copied again only when a different module is
    loaded: load a module again with ``force=True`` after changing its weights in place.
    """

    def __init__(self, net: UNet, channels: int, sigma_data: float, batch: int, device: torch.device,
                 bf16: bool = True):
        self.batch, self.bf16 = batch, bf16
        self.model = EDMPrecond(UNet(net.config), channels, sigma_data).to(device).eval().requires_grad_(False)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.run = compiled(Endpoint(self.model, bf16))
        self._loaded = None

    def load(self, denoiser: EDMPrecond, force: bool = False) -> "SamplingEngine":
        if force or self._loaded is None or self._loaded() is not denoiser:
            state = select_branches(denoiser.state_dict(), denoiser.channels, [denoiser.branches - 1], prefix="net.")
            with torch.no_grad():
                self.model.load_state_dict(state)
            self._loaded = weakref.ref(denoiser)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.batch:
            raise ValueError(f"the compiled sampler takes batches of {self.batch}, got {x.shape[0]}; pad the batch")
        new_step()
        with no_gc():
            return self.run(x, sigma).clone()


_SAMPLERS: dict[tuple, SamplingEngine] = {}


def sampling_engine(denoiser: EDMPrecond, batch: int = SAMPLE_BATCH, bf16: bool = True) -> SamplingEngine:
    """The process's compiled sampler for ``denoiser``'s architecture at ``batch`` (bf16 or fp32), ``denoiser`` loaded."""
    device = next(denoiser.parameters()).device
    key = (denoiser.net.config, denoiser.channels, denoiser.sigma_data, batch, str(device), bf16, compile_mode(),
           force_layout_opt())
    if key not in _SAMPLERS:
        _SAMPLERS[key] = SamplingEngine(denoiser.net, denoiser.channels, denoiser.sigma_data, batch, device, bf16)
    return _SAMPLERS[key].load(denoiser)
