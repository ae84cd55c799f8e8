"""What changed between two studies' headlines, NFE by NFE (e.g. a published screen and the campaign that replaces it).

    python -m analysis.compare --old results/fmnist-sfd-nfe2/optuna-journal.log fmnist-sfd-nfe2 \
                               --new runs/optuna-journal.log bdense-fmnist-gpu-sfd-nfe2-exp-k1-2-3-4-6-8 [--out FILE.md]

For every NFE either study has, both headlines by the study contract's rule (:func:`analysis.summary.headline`):
the K = 1 baseline and the best B-DENSE configuration, each mean ± s.d. over seeds with n, at each study's
headline fidelity, the verdict, and the change from old to new (new - old FID; whether the best configuration or
the verdict changed). Each side names its training (iterations), fidelity and teacher: where those differ the
change mixes their effects, and the table says so. Reads the stores only.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .report import _fmt, _mean_sd
from .summary import headline

PROG = "python -m analysis.compare"


def _side(trials: pd.DataFrame, row: dict[str, Any] | None) -> dict[str, Any]:
    """One study's headline row with the training it stands on (iterations and teachers of its groups' trials)."""
    if row is None:
        return {}
    numbers = [n for g in (row["baseline"], row["bdense"]) if g for n in g["trial_numbers"]]
    used = trials[trials["number"].isin(numbers)]
    its = sorted({int(v) for v in used.get("iterations", pd.Series(dtype=float)).dropna()})
    teachers = sorted({str(v) for v in used.get("teacher_key", pd.Series(dtype=object)).dropna()})
    return {**row, "iterations": its, "teachers": teachers}


def _change(old: dict | None, new: dict | None) -> float | None:
    if not old or not new:
        return None
    d = new["mean"] - old["mean"]
    return d if math.isfinite(d) else None


def compare_headlines(old: pd.DataFrame, new: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per NFE of either study: ``nfe``, ``old``/``new`` (headline rows with ``iterations`` and
    ``teachers``, {} where that study lacks the NFE), ``baseline_change``/``best_change`` (new - old mean FID),
    ``best_config_changed``, ``verdict_changed`` and ``confounded`` (what differs besides the result: training
    length, fidelity, teacher)."""
    by_old = {r["nfe"]: r for r in headline(old)}
    by_new = {r["nfe"]: r for r in headline(new)}
    rows = []
    for nfe in sorted(set(by_old) | set(by_new)):
        o, n = _side(old, by_old.get(nfe)), _side(new, by_new.get(nfe))
        confounded = [what for what, key in (("training length", "iterations"), ("fidelity", "fidelity"),
                                             ("teacher", "teachers")) if o and n and o[key] != n[key]]
        ob, nb = o.get("bdense"), n.get("bdense")
        rows.append(dict(
            nfe=nfe, old=o, new=n,
            baseline_change=_change(o.get("baseline"), n.get("baseline")), best_change=_change(ob, nb),
            best_config_changed=None if not (ob and nb) else ob["config"] != nb["config"],
            verdict_changed=None if not (o.get("comparison") and n.get("comparison"))
            else o["comparison"]["direction"] != n["comparison"]["direction"],
            confounded=confounded,
        ))
    return rows


def _describe(side: dict) -> str:
    if not side:
        return "—"
    its = "/".join(map(str, side["iterations"])) or "n/a"
    return f"{side['fidelity']}, {its} it., teacher {'/'.join(side['teachers']) or 'n/a'}"


def _n(g: dict | None) -> str:
    return f" (n = {g['n_seeds']})" if g else ""


def to_markdown(rows: list[dict[str, Any]], old_name: str, new_name: str) -> str:
    lines = [f"# Headlines: `{old_name}` (old) against `{new_name}` (new)", "",
             "| NFE | | old | new | change (new - old) |", "|---:|---|---|---|---|"]
    for r in rows:
        o, n = r["old"], r["new"]
        ob, nb = o.get("bdense"), n.get("bdense")
        best_note = "" if r["best_config_changed"] is None else (
            "; another configuration" if r["best_config_changed"] else "; same configuration")
        lines += [
            f"| {r['nfe']} | training | {_describe(o)} | {_describe(n)} | "
            f"{_training_change(r)} |",
            f"| | K = 1 | {_mean_sd(o.get('baseline'))}{_n(o.get('baseline'))} | "
            f"{_mean_sd(n.get('baseline'))}{_n(n.get('baseline'))} | {_signed(r['baseline_change'])} |",
            f"| | best B-DENSE | {(ob['config'] + ': ') if ob else ''}{_mean_sd(ob)}{_n(ob)} | "
            f"{(nb['config'] + ': ') if nb else ''}{_mean_sd(nb)}{_n(nb)} | {_signed(r['best_change'])}{best_note} |",
            f"| | verdict | {o.get('verdict') or '—'} | {n.get('verdict') or '—'} | "
            f"{'—' if r['verdict_changed'] is None else ('changed' if r['verdict_changed'] else 'same')} |",
        ]
    if any(r["confounded"] for r in rows):
        lines += ["", "Where training length, fidelity or teacher differ, a change mixes their effects with the "
                  "replicates' noise; it is not the effect of any one of them."]
    return "\n".join(lines) + "\n"


def _training_change(r: dict[str, Any]) -> str:
    if not (r["old"] and r["new"]):
        return "only in the old study" if r["old"] else "only in the new study"
    return "differs: " + ", ".join(r["confounded"]) if r["confounded"] else "same"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{'+' if x >= 0 else ''}{_fmt(x, 3)} FID"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", nargs=2, required=True, metavar=("STORAGE", "STUDY"))
    p.add_argument("--new", nargs=2, required=True, metavar=("STORAGE", "STUDY"))
    p.add_argument("--out", default=None, help="write the table (markdown) here too")
    args = p.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from .load import StudyLoadError, load_trials

    try:
        old, new = load_trials(*args.old), load_trials(*args.new)
    except StudyLoadError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    text = to_markdown(compare_headlines(old, new), args.old[1], args.new[1])
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
