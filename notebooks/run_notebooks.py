"""Execute the notebooks in place and keep their outputs, so they show their plots where the repository is browsed.

    python notebooks/run_notebooks.py              # both notebooks, against the published H100 study (make notebooks)
    python notebooks/run_notebooks.py ab_vs_fid    # one of them
    BDENSE_STUDY=NAME BDENSE_STORAGE=URL python notebooks/run_notebooks.py   # against another study

Each notebook runs top to bottom in a fresh kernel (nbclient) with ``BDENSE_STUDY``, ``BDENSE_STORAGE`` and
``BDENSE_TRACKING_URI`` set to the published study ``results/fmnist-sfd-nfe2`` unless the environment sets them;
its figures also land in ``BDENSE_FIG_DIR`` (default ``runs/figures``, not tracked). Inline images are PNGs at
the dpi the notebooks' setup cell asks for; the run fails if a notebook raises, or if its file ends up larger
than ``--max-kb``. Timing metadata is not recorded, so re-running on the same study changes little.
Regenerate the cells first with ``python notebooks/make_notebooks.py`` when they changed (``make notebooks``
does both).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = ("ab_vs_fid", "ablations")
PUBLISHED = {
    "BDENSE_STUDY": "fmnist-sfd-nfe2",
    "BDENSE_STORAGE": "journal:results/fmnist-sfd-nfe2/optuna-journal.log",
    "BDENSE_TRACKING_URI": "sqlite:///results/fmnist-sfd-nfe2/mlflow.db",
}


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` in a fresh kernel started in ``notebooks/``; returns it with its outputs."""
    import nbclient

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(HERE)}})
    client.execute()
    return nb


def errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "error"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=list(NOTEBOOKS), help=f"notebooks to run (default: {' '.join(NOTEBOOKS)})")
    p.add_argument("--max-kb", type=int, default=600, help="largest notebook file allowed (default: %(default)s)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n.removesuffix(".ipynb") not in NOTEBOOKS]
    if unknown:
        print(f"error: unknown notebook {unknown[0]!r}; choose from {', '.join(NOTEBOOKS)}", file=sys.stderr)
        return 2
    for key, value in PUBLISHED.items():
        os.environ.setdefault(key, value)
    storage = os.environ["BDENSE_STORAGE"]
    journal = storage.removeprefix("journal:")
    if "://" not in storage and not (ROOT / journal).is_file() and not Path(journal).is_file():
        print(f"error: no Optuna storage at {journal}; set BDENSE_STORAGE", file=sys.stderr)
        return 2
    print(f"study {os.environ['BDENSE_STUDY']!r} in {storage}")
    for name in args.names:
        path = HERE / f"{name.removesuffix('.ipynb')}.ipynb"
        start = time.perf_counter()
        nb = execute(path)
        failed = errors(nb)
        if failed:
            print(f"error: {path.name} raised {failed[0]}", file=sys.stderr)
            return 1
        nbformat.validate(nb)
        text = nbformat.writes(nb) + "\n"
        kb = len(text.encode()) / 1024
        if kb > args.max_kb:
            print(f"error: {path.name} would be {kb:.0f} KB (limit {args.max_kb}); lower the inline dpi", file=sys.stderr)
            return 1
        path.write_text(text)
        images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        print(f"{path.relative_to(ROOT)}: {images} images, {kb:.0f} KB, {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
