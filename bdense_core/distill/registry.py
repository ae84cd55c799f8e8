"""The framework registry: one entry per distillation framework, registered by the framework's own module.

A driver (the study, the demo, the benchmark) never branches on a framework's name; it asks the registry:

    fw = get_framework("sfd")
    shared = fw.for_study(preset.config("sfd"), k_choices=(1, 2, 4), nfe=2)   # what every trial shares
    cfg = fw.for_trial(shared, branches=4, weights=BranchWeights(a=0.5), seed=3)
    result = fw.train(teacher, cfg, data=..., bank=..., callback=...)

Several trials at once (one worker advancing N students per step):

    keys = [fw.batch_key(c) for c in configs]    # configs with equal keys may train together
    results = fw.train_many(teacher, configs, bank=banks, callbacks=hooks)
    # results[i] is configs[i]'s DistillResult, or the exception that stopped it (pruned, diverged)

A new framework is one module holding its config dataclass, its training function and one
:class:`Framework` subclass registered with :func:`register`, plus one import in ``distill/__init__.py`` and
its entries in the presets (``bdense_core/presets.py``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Hashable, Sequence

from .common import DistillResult

# What a trial's training reports after each iteration (see common.StepCallback).
Callback = Callable[[dict[str, float]], None]


class Framework:
    """What a driver needs to know about one distillation framework; subclasses override the hooks."""

    name: ClassVar[str]
    config_type: ClassVar[type]
    description: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False  # trains on data images (progressive distillation), not teacher paths only
    uses_bank: ClassVar[bool] = False  # can train from a TrajectoryBank of teacher paths
    nfe_per_trial: ClassVar[bool] = False  # a trial may run at another NFE than its study (the nfe ablation)
    max_branches: ClassVar[int | None] = None  # largest K the framework supports (None: any)
    prune_metric: ClassVar[str] = "endpoint_l1"  # the per-iteration record a pruner watches (lower is better)

    def train(self, teacher, config, *, data=None, bank=None, callback: Callback | None = None,
              progress: bool = False) -> DistillResult:
        raise NotImplementedError

    def batch_key(self, config) -> Hashable | None:
        """Configs with equal (non-None) keys may train together in one :meth:`train_many` call as one batched
        model; None: this config trains alone. The base class batches nothing."""
        return None

    def train_many(self, teacher, configs: Sequence, *, data=None, bank=None,
                   callbacks: Sequence[Callback | None] | None = None,
                   progress: bool = False) -> list[DistillResult | BaseException]:
        """Train one student per config; ``results[i]`` is ``configs[i]``'s result or the exception that stopped
        it (its callback raised, e.g. a pruner, or its loss diverged). One student stopping never stops the
        others; KeyboardInterrupt propagates. ``bank`` is None, one bank for every config, or a sequence with
        one bank (or None) per config. The base class trains them one after another with :meth:`train`."""
        configs, banks, callbacks = per_config(configs, bank, callbacks)
        results: list[DistillResult | BaseException] = []
        for cfg, cb, bk in zip(configs, callbacks, banks):
            try:
                results.append(self.train(teacher, cfg, data=data, bank=bk, callback=cb, progress=progress))
            except Exception as e:  # noqa: BLE001 - the slot records why this student stopped
                results.append(e)
        return results

    def for_study(self, config, k_choices: tuple[int, ...], nfe: int | None = None):
        """``config`` made fit for every K in ``k_choices`` at ``nfe`` (None: the config's own NFE): the part
        of the configuration that all trials of one study share. Raises ValueError with a one-line reason."""
        raise NotImplementedError

    def for_trial(self, config, *, branches: int, weights, seed: int, nfe: int | None = None):
        """One trial's config from the study's shared ``config``."""
        raise NotImplementedError

    def settings(self, config) -> dict[str, Any]:
        """The framework-specific settings a study records next to its trials (JSON-able)."""
        return {}

    def shared_paths(self, teacher, config, *, size: int, seed: int, root, k_choices: tuple[int, ...],
                     wait: bool = True):
        """Teacher paths computed once and shared by trials (a bank), or None where the framework has none
        (or, with ``wait=False``, while another process builds it)."""
        return None

    def k_choices(self, wanted: tuple[int, ...]) -> tuple[int, ...]:
        """The K choices of ``wanted`` this framework supports."""
        return tuple(k for k in wanted if self.max_branches is None or k <= self.max_branches)

    def __repr__(self) -> str:
        return f"<framework {self.name}>"


def per_config(configs, bank, callbacks) -> tuple[list, list, list]:
    """``train_many``'s arguments as three aligned lists: configs, one bank (or None) and one callback each."""
    configs = list(configs)
    callbacks = list(callbacks) if callbacks is not None else [None] * len(configs)
    banks = list(bank) if isinstance(bank, (list, tuple)) else [bank] * len(configs)
    if not len(callbacks) == len(banks) == len(configs):
        raise ValueError(f"train_many: {len(configs)} configs need as many callbacks and banks "
                         f"(got {len(callbacks)} and {len(banks)})")
    return configs, banks, callbacks


FRAMEWORKS: dict[str, Framework] = {}


def register(framework: Framework) -> Framework:
    """Add ``framework`` to the registry (under ``framework.name``); returns it."""
    if framework.name in FRAMEWORKS and type(FRAMEWORKS[framework.name]) is not type(framework):
        raise ValueError(f"a framework named {framework.name!r} is already registered")
    FRAMEWORKS[framework.name] = framework
    return framework


def get_framework(name: str) -> Framework:
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise ValueError(f"unknown framework {name!r}; choose one of {', '.join(FRAMEWORKS)}") from None


def framework_of(config) -> Framework:
    """The registered framework whose config type ``config`` is."""
    for fw in FRAMEWORKS.values():
        if isinstance(config, fw.config_type):
            return fw
    names = ", ".join(fw.config_type.__name__ for fw in FRAMEWORKS.values())
    raise TypeError(f"unknown distillation config {type(config).__name__}; use one of {names}")
