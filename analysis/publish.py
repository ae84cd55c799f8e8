"""Publish a run folder's stores so that they work from a fresh clone.

    python -m analysis.publish --runs /tmp/bd/runs --out results/fmnist-sfd-nfe2 [--max-points 200]

A run folder (``study/run.py --runs-dir``) holds an Optuna journal, an MLflow SQLite store and its artifacts
under absolute paths of the machine that ran it. This writes into ``--out``:

- ``optuna-journal.log``: the Optuna storage, unchanged (every study in it, every trial);
- ``mlflow.db`` + ``mlartifacts/``: a compact copy of the MLflow store. Runs, parameters, tags and final metric
  values are all kept; metric histories longer than ``--max-points`` keep evenly spaced steps and their last
  step; artifact locations become relative to ``--out``; greyscale PNGs stored as RGB are stored as greyscale.

Open it with ``cd OUT && mlflow ui --backend-store-uri sqlite:///mlflow.db`` (artifact paths are relative to the
folder the server starts in).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

ARTIFACT_DIR = "mlartifacts"
_ARTIFACT_URI = re.compile(r"^(?:file://)?.*?/" + ARTIFACT_DIR + r"(?=/|$)")


@dataclass(frozen=True)
class Published:
    out: Path
    runs: int
    metric_rows_before: int
    metric_rows_after: int
    bytes_total: int

    def describe(self) -> str:
        return (f"published {self.runs} MLflow runs to {self.out} ({self.bytes_total / 1e6:.1f} MB; metric rows "
                f"{self.metric_rows_before:,} -> {self.metric_rows_after:,}); open with: cd {self.out} && "
                f"mlflow ui --backend-store-uri sqlite:///mlflow.db")


def relative_artifact_uri(uri: str | None) -> str | None:
    """``file:///any/where/mlartifacts/exp/run/artifacts`` -> ``mlartifacts/exp/run/artifacts``; others unchanged."""
    if not uri:
        return uri
    return _ARTIFACT_URI.sub(ARTIFACT_DIR, uri, count=1)


def thin_metric_history(con: sqlite3.Connection, max_points: int) -> None:
    """Keep at most about ``max_points`` evenly spaced steps (and always the last) of every (run, key) history."""
    con.execute(
        """DELETE FROM metrics WHERE rowid IN (
             SELECT rowid FROM (
               SELECT rowid, ROW_NUMBER() OVER w AS rn, COUNT(*) OVER (PARTITION BY run_uuid, key) AS n
               FROM metrics WINDOW w AS (PARTITION BY run_uuid, key ORDER BY step, timestamp))
             WHERE n > :m AND rn < n AND (rn - 1) % ((n + :m - 1) / :m) != 0)""",
        {"m": max_points},
    )


def compact_mlflow_store(db: Path, artifacts: Path | None, out: Path, max_points: int = 200) -> tuple[int, int, int]:
    """Copy an MLflow SQLite store (and its artifact folder) into ``out``; returns (runs, rows before, rows after)."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / "mlflow.db"
    target.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
    try:
        before = dst.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        thin_metric_history(dst, max_points)
        after = dst.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        for table, key, column in (("runs", "run_uuid", "artifact_uri"),
                                   ("experiments", "experiment_id", "artifact_location")):
            for ident, uri in dst.execute(f"SELECT {key}, {column} FROM {table}").fetchall():
                new = relative_artifact_uri(uri)
                if new != uri:
                    dst.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (new, ident))
        runs = dst.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        dst.commit()
        dst.execute("VACUUM")
    finally:
        dst.close()
    if artifacts is not None and artifacts.is_dir():
        dest = out / ARTIFACT_DIR
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(artifacts, dest)
        for png in dest.rglob("*.png"):
            _greyscale_if_grey(png)
    return runs, before, after


def _greyscale_if_grey(path: Path) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "RGB":
            return
        pixels = np.asarray(im)
    if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        Image.fromarray(pixels[..., 0]).save(path, optimize=True)


def publish(runs: Path, out: Path, max_points: int = 200) -> Published:
    journal, db = runs / "optuna-journal.log", runs / "mlflow.db"
    if not journal.is_file() and not db.is_file():
        raise FileNotFoundError(f"{runs} holds neither optuna-journal.log nor mlflow.db; pass the study's --runs-dir")
    out.mkdir(parents=True, exist_ok=True)
    if journal.is_file():
        shutil.copy2(journal, out / journal.name)
    n, before, after = (compact_mlflow_store(db, runs / ARTIFACT_DIR, out, max_points) if db.is_file()
                        else (0, 0, 0))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Published(out, n, before, after, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.publish", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the study's run folder (study/run.py --runs-dir)")
    parser.add_argument("--out", type=Path, required=True, help="folder to publish into (created)")
    parser.add_argument("--max-points", type=int, default=200,
                        help="longest metric history kept per run and metric (default: 200)")
    args = parser.parse_args(argv)
    if args.max_points < 2:
        parser.exit(2, "error: --max-points must be at least 2\n")
    try:
        print(publish(args.runs, args.out, args.max_points).describe())
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
