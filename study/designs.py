"""Designed grids of fixed configurations, enqueued into a study (interim: the grids move here from analysis/)."""

from analysis.ablation import ABLATIONS as DESIGNS, ablation_grid, best_bdense_params  # noqa: F401

from . import space


def enqueue_ablation(study, name, k_choices, best_params=None, seeds=3, nfe_values=(2, 3, 4, 5)):
    mode = str(study.user_attrs.get("weights_mode") or "exp")
    have = {(t.user_attrs.get("ablation_config"), t.user_attrs.get("nfe")) for t in study.get_trials(deepcopy=False)
            if t.state.name in ("WAITING", "RUNNING", "COMPLETE") and str(t.user_attrs.get("role", "")).startswith("ablation:")}
    n = 0
    for cfg in ablation_grid(name, k_choices, best_params=best_params, seeds=seeds, nfe_values=nfe_values, weights_mode=mode):
        if (cfg.user_attrs["ablation_config"], cfg.user_attrs.get("nfe")) in have:
            continue
        space.enqueue(study, cfg.params, cfg.user_attrs)
        n += 1
    return n
