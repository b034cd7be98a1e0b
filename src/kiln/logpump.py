"""An instance's log writer: starts the instance's command with its output on a pipe and copies
the pipe into `log`, rotated at a size (log.1 ... log.KEEP), so no instance grows its log without
bound and the app never waits on the disk for long (the pipe buffers while the file rotates).

Run as a script (`python -I -S logpump.py LOG MAX_BYTES KEEP FDS -- argv...`), standard library
only, so it starts in ~20 ms. It is the instance's process-group leader and stays out of the
instance's cgroup (an OOM kill of the app keeps its last lines): it ignores SIGTERM, exits when
the last writer closes the pipe (the app and the sandbox are gone) with the command's status.
FDS (comma-separated, or '-') are descriptors the command inherits (bwrap's --info-fd and data
pipes); the pump closes its copies once the command has started.

`tail` reads the end of a log across the rotation, for `kiln logs` and the health gate.
"""

from __future__ import annotations

import os
import signal
import sys

CHUNK = 1 << 16


def rotated(log: str, keep: int) -> list[str]:
    """The log's files, oldest first: log.KEEP ... log.1, log."""
    return [*(f"{log}.{i}" for i in range(keep, 0, -1)), log]


def rotate(log: str, keep: int) -> None:
    """log -> log.1 -> ... -> log.KEEP (the oldest is dropped); keep 0 just empties the log."""
    if keep <= 0:
        os.truncate(log, 0)
        return
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{log}.{i}"):
            os.replace(f"{log}.{i}", f"{log}.{i + 1}")
    os.replace(log, f"{log}.1")


def tail(log: str, nbytes: int, keep: int = 20) -> bytes:
    """The last `nbytes` of the log, reading into log.1, log.2... when the current file is short
    (just rotated)."""
    parts: list[bytes] = []
    need = nbytes
    for path in reversed(rotated(log, keep)):
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - need))
                data = fh.read(need)
        except OSError:
            if path == log:
                continue
            break
        parts.append(data)
        need -= len(data)
        if need <= 0:
            break
    return b"".join(reversed(parts))


def _open(log: str) -> int:
    return os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def pump(read_fd: int, log: str, max_bytes: int, keep: int) -> None:
    """Copy until EOF, rotating before a write would take the file past max_bytes."""
    out = _open(log)
    size = os.fstat(out).st_size
    try:
        while True:
            chunk = os.read(read_fd, CHUNK)
            if not chunk:
                return
            if size and size + len(chunk) > max_bytes:
                os.close(out)
                rotate(log, keep)
                out = _open(log)
                size = os.fstat(out).st_size
            view = memoryview(chunk)
            while view:
                written = os.write(out, view)
                view = view[written:]
                size += written
    finally:
        os.close(out)


def main(args: list[str]) -> int:
    log, max_bytes, keep, fds = args[0], int(args[1]), int(args[2]), args[3]
    argv = args[5:]
    inherited = [int(x) for x in fds.split(",")] if fds != "-" else []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)  # a handler, not SIG_IGN: exec resets it for the command
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the command: output on the pipe, kiln's descriptors, nothing else of ours
        try:
            os.close(read_fd)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            os.close(write_fd)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.execv(argv[0], argv)
        except OSError as exc:
            os.write(2, f"kiln: cannot start {argv[0]}: {exc}\n".encode())
        os._exit(127)
    os.close(write_fd)
    for fd in inherited:
        os.close(fd)
    try:
        pump(read_fd, log, max_bytes, keep)
    except OSError as exc:  # disk full, folder gone: drain so the app never blocks on a pipe
        sys.stderr.write(f"kiln log pump: {exc}\n")
        while os.read(read_fd, CHUNK):
            pass
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if status >= 0 else 1


def _ignore(signum: int, frame: object) -> None:
    return None


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.exit(128 - code if code < 0 else code)
