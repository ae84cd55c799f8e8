"""Screen, then confirm: the screen's best configurations and both baselines re-trained at full length.

``--confirm-top N --confirm-seeds S --confirm-length full``: after the search, the N best K > 1 configurations
other than the uniform baseline's (confirmed anyway) of the screen (ranked by the contract's rule: mean over their seeds at the study's NFE and the search's
length), the K = 1 baseline and the uniform baseline are each enqueued once per confirmation seed, as trials of
the same study with ``fidelity`` = the confirmation length, ``role`` = ``confirm``, one seed each (so every
seed is its own trial with its own MLflow run), ``screen_trial`` (the screen trial it re-runs) and
``confirm_rank`` (1..N, 0 for the baselines). All confirmation configurations share the same seeds, so students
of one seed share their teacher paths (paired) and two seeds share nothing but the teacher. Re-running the
command enqueues only what is missing.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from . import contract as c
from . import space
from .config import StudyConfig

LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


def candidates(study: optuna.Study, config: StudyConfig) -> list[tuple[int, dict, int]]:
    """(rank, params, screen trial number) of what to confirm: the top N configurations, then both baselines."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    records = [c.trial_record(t) for t in trials.values()]
    gs = c.groups(records, nfe=config.nfe, fidelity=config.length, default_nfe=config.nfe)
    baselines = {space.params_key(params, config) for _, params in space.baseline_params(config)}  # confirmed anyway
    ranked = sorted((g for g in gs.values() if g.key not in baselines), key=lambda g: (g.mean, -g.n, min(g.trials)))
    out = []
    for rank, g in enumerate(ranked[: config.confirm_top], 1):
        first = trials[min(g.trials)]
        out.append((rank, space.trial_params(first), first.number))
    for role, params in space.baseline_params(config):
        key = space.params_key(params, config)
        screen = [t for t in trials.values() if t.user_attrs.get(c.ROLE) == role and t.state == TrialState.COMPLETE
                  and c.fidelity_of(t.user_attrs) == config.length and space.params_key(space.trial_params(t), config) == key]
        out.append((0, params, screen[0].number if screen else -1))
    return out


def waiting_confirmation(study: optuna.Study, config: StudyConfig) -> int:
    """How many confirmation trials wait to run (queued now, or by an earlier command that was stopped)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
               if t.user_attrs.get(c.ROLE) == c.ROLE_CONFIRM and c.fidelity_of(t.user_attrs) == config.confirm_length)


def enqueue_confirmation(study: optuna.Study, config: StudyConfig) -> int:
    """Enqueue the missing (configuration, seed) confirmation trials; returns how many."""
    existing = [t for t in study.get_trials(deepcopy=False, states=LIVE)
                if t.user_attrs.get(c.ROLE) == c.ROLE_CONFIRM and c.fidelity_of(t.user_attrs) == config.confirm_length]
    have = {(c.config_key({**space.trial_params(t), **t.user_attrs}), tuple(t.user_attrs.get(c.SEEDS, ()))) for t in existing}
    n = 0
    for rank, params, screen_trial in candidates(study, config):
        key = space.params_key(params, config)
        for seed in config.confirm_seed_list:
            if (key, (seed,)) in have:
                continue
            space.enqueue(study, params, {c.ROLE: c.ROLE_CONFIRM, c.FIDELITY: config.confirm_length,
                                          c.SEEDS: [seed], c.NFE: config.nfe, c.SCREEN_TRIAL: screen_trial,
                                          c.CONFIRM_RANK: rank, c.WEIGHTS_MODE: config.weights_mode})
            have.add((key, (seed,)))
            n += 1
    return n
