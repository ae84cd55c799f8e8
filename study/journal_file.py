"""Journal files that survive a torn write (a workaround: Optuna 5 does not repair them).

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends one JSON line per operation. A write
cut short (disk full, power loss, a killed NFS client) leaves a last line without its newline, or NUL bytes
where the file system had allocated blocks, or a last line that does not parse. Optuna ignores such a last
line while reading, but appends the next operation right after it: the two lines merge into one that does
not parse, every later read raises, and no study in the file opens again, not even in plain Optuna
(``tests/test_storage.py`` pins that behaviour, which is why this module exists).

This module checks a journal file before the study appends to it:

- damage at the tail (the file's last lines are torn: no newline, NUL bytes, or not an Optuna log line) is
  cut off, back to the last complete line, after a copy of the whole file is kept next to it
  (``NAME.torn-YYYYmmdd-HHMMSS.bak``); one line says so;
- damage before the tail (a broken line followed by good ones) is refused with one line naming the fix.

The tail is checked again under Optuna's own file lock before every append (:class:`RepairingLock`), so a
tail torn by another process while this one runs is cut before this process writes after it. The result is
always a file that plain ``JournalStorage(JournalFileBackend(path))`` opens: only whole trailing lines that
Optuna could not read are removed.

``python -m study.journal_file PATH [--repair]`` checks (and repairs) a journal file by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

Say = Callable[[str], None]
TAIL_BLOCK = 8192  # first look at the last 8 KiB; doubled while no good line is found in it


class JournalDamaged(ValueError):
    """The journal file cannot be used as it is; the message is one line that names the fix."""


def _say_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_log_line(line: bytes) -> bool:
    """True for a complete Optuna journal line: newline-terminated JSON object with an ``op_code``."""
    if not line.endswith(b"\n") or b"\0" in line:
        return False
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and "op_code" in obj


def _why(lines: list[bytes]) -> str:
    if any(b"\0" in line for line in lines):
        return "NUL bytes"
    if lines and not lines[-1].endswith(b"\n"):
        return "no newline at the end"
    return "a line that is not an Optuna log entry"


@dataclass(frozen=True)
class Scan:
    """What a full read of a journal file found."""

    size: int  # bytes
    lines: int  # lines, a torn last one included
    good_end: int  # byte offset just after the last line Optuna can read (the file's size if undamaged)
    tail: tuple[bytes, ...]  # the damaged lines at the end (their first 256 bytes); empty if the tail is sound
    first_bad_before_tail: int | None  # 1-based number of a damaged line that good lines follow

    @property
    def reason(self) -> str:
        return _why(list(self.tail)) if self.tail else ""


def scan(path: Path) -> Scan:
    """Read the whole file once and locate its damage (nothing is written)."""
    offset = good_end = 0
    n = bad_start_line = 0
    bad: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            n += 1
            if is_log_line(line):
                if bad:  # damage before the tail: count the remaining lines and stop
                    n += sum(1 for _ in f)
                    return Scan(path.stat().st_size, n, good_end, (), bad_start_line)
                good_end = offset + len(line)
            else:
                if not bad:
                    bad_start_line = n
                bad.append(line[:256])
            offset += len(line)
    return Scan(offset, n, good_end, tuple(bad), None)


def _split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each b"\\n" (as Optuna reads a journal: ``for line in file``)."""
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _tail_cut(f, size: int) -> tuple[int, list[bytes]] | None:
    """(offset to cut at, the damaged lines) from the file's end, reading only its tail; None if the tail
    holds no good line at all (the caller then scans the whole file)."""
    block = TAIL_BLOCK
    while True:
        start = max(0, size - block)
        f.seek(start)
        data = f.read(size - start)
        lines = _split_lines(data)
        skip = 1 if start > 0 and lines else 0  # the first piece may be the end of an earlier line
        base = start + (len(lines[0]) if skip else 0)
        offsets = [base]
        for line in lines[skip:]:
            offsets.append(offsets[-1] + len(line))
        body = lines[skip:]
        bad: list[bytes] = []
        for i in range(len(body) - 1, -1, -1):
            if is_log_line(body[i]):
                return offsets[i + 1], list(reversed(bad))
            bad.append(body[i][:256])
        if start == 0:
            return (0, list(reversed(bad))) if body else (0, [])
        if block >= 1 << 24:
            return None
        block *= 2


def _backup_and_cut(path: Path, cut: int, damaged: list[bytes], say: Say) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.torn-{stamp}.bak")
    k = 1
    while backup.exists():
        k += 1
        backup = path.with_name(f"{path.name}.torn-{stamp}-{k}.bak")
    shutil.copy2(path, backup)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    lines = f"{len(damaged)} line" + ("s" if len(damaged) != 1 else "")
    say(f"journal {path}: its last {lines} were torn ({_why(damaged)}); cut {size - cut} bytes back to the "
        f"last complete line, the file as it was is kept in {backup.name}")
    return backup


def damaged_before_tail_message(path: Path, s: Scan) -> str:
    n = s.first_bad_before_tail
    return (f"journal {path} is damaged at line {n} of {s.lines} (not at its end), so Optuna cannot read it; "
            f"restore it from a backup, or keep the lines before the damage with: "
            f"head -n {n - 1} {path} > {path}.repaired (and use that file)")


def _not_a_journal(path: Path) -> JournalDamaged:
    return JournalDamaged(f"{path} exists but is not an Optuna journal file (no line of it is an Optuna log "
                          f"entry); give another file or move it away")


def only_nul_or_blank(path: Path) -> bool:
    """True for a file of NUL bytes and blanks only (a new journal whose first write was torn)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip(b"\0 \t\r\n"):
                return False
    return True


def repair_tail(path: Path, say: Say = _say_stderr) -> Path | None:
    """Cut a damaged tail off ``path`` (the caller holds the journal's lock). Returns the backup's path, or
    None when the tail was sound. Raises :class:`JournalDamaged` for damage before the tail or for a file
    that holds no Optuna log line (unless it is only NUL bytes and blanks: a first write that was torn)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb") as f:
        found = _tail_cut(f, size)
    if found is None or found[0] == 0:  # no good line in the tail: read the whole file
        s = scan(path)
        if s.first_bad_before_tail is not None:
            raise JournalDamaged(damaged_before_tail_message(path, s))
        if s.good_end == 0 and not only_nul_or_blank(path):
            raise _not_a_journal(path)
        found = (s.good_end, list(s.tail))
    cut, damaged = found
    if cut >= size:
        return None
    return _backup_and_cut(path, cut, damaged, say)


class RepairingLock(JournalFileSymlinkLock):
    """Optuna's default journal lock (``PATH.lock`` symlink, so plain Optuna processes on the same file
    exclude each other with it); once held, it cuts a torn tail before Optuna appends."""

    def __init__(self, path: str, say: Say = _say_stderr) -> None:
        super().__init__(path)
        self._journal = Path(path)
        self._say = say

    def acquire(self) -> bool:
        held = super().acquire()
        try:
            repair_tail(self._journal, self._say)
        except BaseException:
            self.release()
            raise
        return held


def check_readable(path: Path) -> Scan:
    """Scan ``path`` for a reader that never writes: raises :class:`JournalDamaged` (naming the fix) when
    plain Optuna could not read it; a single torn last line is fine (Optuna skips it)."""
    s = scan(path)
    if s.first_bad_before_tail is not None:
        raise JournalDamaged(damaged_before_tail_message(path, s))
    if s.size and s.good_end == 0 and not only_nul_or_blank(path):
        raise _not_a_journal(path)
    if len(s.tail) > 1:
        raise JournalDamaged(f"journal {path}: its last {len(s.tail)} lines are torn ({s.reason}), so Optuna "
                             f"cannot read it; repair it (a backup is kept) with: python -m study.journal_file "
                             f"--repair {path}")
    return s


def open_backend(path: Path, *, create: bool, say: Say = _say_stderr) -> JournalFileBackend:
    """Optuna's file backend for ``path``. ``create=True``: a missing file is created, a torn tail is cut
    (now and before every later append), damage before the tail raises. ``create=False``: the file must
    exist and be readable by plain Optuna; nothing is ever written. Raises :class:`JournalDamaged` or
    :class:`OSError` (missing file, permissions)."""
    if path.is_dir():
        raise JournalDamaged(f"{path} is a folder, not a journal file")
    if not create:
        if not path.is_file():
            raise FileNotFoundError(f"no journal file {path}")
        check_readable(path)
        return JournalFileBackend(str(path))
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionError(f"{path} is not readable and writable")
        s = scan(path)
        if s.first_bad_before_tail is not None:
            raise JournalDamaged(damaged_before_tail_message(path, s))
        if s.size and s.good_end == 0 and not only_nul_or_blank(path):
            raise _not_a_journal(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(f"cannot write to {path.parent}")
        open(path, "ab").close()
    lock = RepairingLock(str(path), say)
    lock.acquire()  # cuts a torn tail now, under the lock, so that nobody is appending meanwhile
    lock.release()
    return JournalFileBackend(str(path), lock_obj=lock)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m study.journal_file",
                                description="Check an Optuna journal file; with --repair, cut a torn tail "
                                            "(a copy of the file is kept next to it).")
    p.add_argument("path", type=Path)
    p.add_argument("--repair", action="store_true")
    args = p.parse_args(argv)
    try:
        if not args.path.is_file():
            raise JournalDamaged(f"no journal file {args.path}")
        if args.repair:
            lock = RepairingLock(str(args.path))
            lock.acquire()
            lock.release()
        s = check_readable(args.path)
    except JournalDamaged as e:
        print(e, file=sys.stderr)
        return 2
    torn = f"; its last line is torn ({s.reason}) and will be cut before the next write" if s.tail else ""
    print(f"journal {args.path}: {s.lines} lines, readable by Optuna{torn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
