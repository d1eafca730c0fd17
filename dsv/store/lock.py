"""One writer per store: an advisory OS lock (``fcntl.flock``) on ``<store>/writer.lock``.

``run``, ``resume`` and ``--fresh`` take the lock before they write and hold it until the run
ends; a second writer is refused with the holder's host and pid (written into the lock file).
Readers (``show``, ``export``, ``verify``) never take it. The OS drops the lock with the process
that held it, also on ``kill -9``, so a lock file left by a dead process is simply taken over.

A process asks for a lock it holds as often as it likes (the pipeline, its stages and their
sub-runs each do); the lock is dropped when the :func:`session` it was taken in ends. The ranks
of a multi-process run share rank 0's lock (only rank 0 asks for it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from dsv.errors import StoreError

LOCK_FILE = "writer.lock"
log = logging.getLogger("dsv")

_held: dict[Path, int] = {}  # resolved store path -> locked file descriptor
_sessions: list[set[Path]] = []  # the locks each open session took (innermost last)


def _key(path: str | Path) -> Path:
    return Path(path).resolve()


def holder(path: str | Path) -> str:
    """Who wrote the lock file of ``path`` last (``host pid N``), or "" if nobody did."""
    try:
        doc = json.loads((Path(path) / LOCK_FILE).read_text())
        return f"{doc['host']} pid {doc['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def is_held(path: str | Path) -> bool:
    """Whether this process holds the writer lock of ``path``."""
    return _key(path) in _held


def acquire(path: str | Path) -> None:
    """Take the writer lock of the store at ``path`` (an existing folder), or raise StoreError
    naming the process that holds it. Taking a lock this process holds does nothing. The lock
    is dropped when the innermost :func:`session` open now ends (or with the process)."""
    key = _key(path)
    if key not in _held:
        adopt(lock_folder(Path(path)), path)


def adopt(fd: int, path: str | Path) -> None:
    """Hold the locked descriptor ``fd`` as the lock of ``path`` (a store built under a
    temporary name and renamed into place keeps the lock it was built with)."""
    key = _key(path)
    _held[key] = fd
    if _sessions:
        _sessions[-1].add(key)


def lock_folder(path: Path) -> int:
    """Lock ``path``'s lock file; returns the descriptor holding the lock."""
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{lock}: cannot open the writer lock ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        who = holder(path) or "another process"
        raise StoreError(
            f"{path}: another dsv process is writing this store ({who}); wait for it to end, "
            f"or stop it and then run: dsv-pipeline resume {path}"
        ) from None
    previous, me = holder(path), f"{socket.gethostname()} pid {os.getpid()}"
    if previous and previous != me:
        log.info("%s: taking over the writer lock left by %s (no longer running)", path, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)
    return fd


def release(path: str | Path) -> None:
    """Drop the writer lock of ``path`` if this process holds it."""
    fd = _held.pop(_key(path), None)
    if fd is not None:
        try:
            # a lock left by a clean end names nobody: the next writer's "taking over" line is
            # kept for a holder that died (kill -9, a crash), where it tells what happened
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Every writer lock taken inside is dropped at its end (a run, a resume, an API call)."""
    _sessions.append(set())
    try:
        yield
    finally:
        for key in _sessions.pop():
            release(key)
