"""What a person sees: raygen's own lines and progress; Ray's and libraries' internals go to Ray's log files.

    used by every command that joins Ray (gen_jobs.core.cluster.connect); `--verbose` on any command, or
    RAYGEN_LOG_LEVEL=INFO (or DEBUG), shows everything as Ray prints it

Ray forwards every worker's and actor's output to the driver, prefixed with
`(ActorName pid=...)`: Ray Train's per-worker report lines, harmless C++ notices,
library warnings. By default a raygen driver prints only the lines raygen's own
code in those processes marks with MARK (an epoch's figures, guard events), without
Ray's prefix, and renders PROGRESS lines as its progress display; Ray still
writes everything to its session logs (`/tmp/ray/session_latest/logs` on the
head node, and the dashboard). A failure still reaches the user: a worker's
exception comes back to the driver, which prints it as one `error:` line.

Progress: on a terminal one live line redrawn in place (training: epoch, step,
ETA; generation: rows, rate, ETA); elsewhere (a pipe, a log file, `ray job
submit`'s logs) a plain line when nothing was printed for PLAIN_EVERY seconds.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import re
import sys
import threading
import time

MARK = "[raygen] "  # a line raygen's code printed in a Ray worker, for the user
PROGRESS = "[raygen:progress] "  # a progress update from a Ray worker, for the progress display
PLAIN_EVERY = 5.0  # seconds: how often a non-terminal gets a progress line
LOG_LEVEL_VARIABLE = "RAYGEN_LOG_LEVEL"

# Lines Ray's C++ core prints on the driver's own stderr that mean nothing to a user (Ray issue 53727:
# every Ray Data actor pool and Ray Train controller logs it at error level).
NATIVE_NOISE = re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store")
# Error notices Ray's raylet sends every driver that are part of an orderly stop, not a failure:
# Serve's controller is killed while its graceful_shutdown task is in flight (`serve.shutdown()`).
SHUTDOWN_NOISE = re.compile(r"Task ServeController\.graceful_shutdown failed")
# Ray's autoscaler notices worth a user's attention, in raygen's words.
WAITING = re.compile(r"resource request cannot be scheduled|cannot be scheduled right now", re.IGNORECASE)


def verbose() -> bool:
    """Whether the user asked for Ray's and libraries' own output (--verbose, RAYGEN_LOG_LEVEL=INFO|DEBUG)."""
    return os.environ.get(LOG_LEVEL_VARIABLE, "").upper() in ("INFO", "DEBUG")


def set_verbose() -> None:
    """--verbose: this process and the Ray processes and jobs it starts show everything."""
    os.environ[LOG_LEVEL_VARIABLE] = "INFO"


def say(line: str) -> None:
    """Print a line for the user from code running in a Ray worker or actor (the driver strips MARK)."""
    print(MARK + line, flush=True)


def report_progress(text: str) -> None:
    """A progress update from a Ray worker: the driver's progress display shows it."""
    print(PROGRESS + text, flush=True)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """One progress display per process: a live line on a terminal, plain lines now and then elsewhere."""

    def __init__(self, stream=None, plain_every: float = PLAIN_EVERY):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.plain_every = plain_every
        self.live = ""  # what the live line shows now (terminal only)
        self.last_printed = time.monotonic()
        self.lock = threading.Lock()

    def update(self, text: str) -> None:
        with self.lock:
            if self.tty and text == self.live:  # (Ray Train forwards a worker's line twice)
                return
            if self.tty:
                self.live = text
                self.stream.write("\r\x1b[2K" + text)
                self.stream.flush()
            elif time.monotonic() - self.last_printed >= self.plain_every:
                self._print(text)

    def line(self, text: str) -> None:
        """A permanent line (the live line, if any, is cleared first and redrawn after)."""
        with self.lock:
            if self.tty and self.live:
                self.stream.write("\r\x1b[2K")
            self._print(text)
            if self.tty and self.live:
                self.stream.write(self.live)
                self.stream.flush()

    def done(self) -> None:
        """The step ended: clear the live line."""
        with self.lock:
            if self.tty and self.live:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            self.live = ""

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_printed = time.monotonic()


_progress: Progress | None = None


def progress() -> Progress:
    """This process's progress display (created on first use, on stdout)."""
    global _progress
    if _progress is None or _progress.stream is not sys.stdout:  # (pytest swaps sys.stdout per test)
        _progress = Progress()
    return _progress


class TrainingEta:
    """Turns a worker's `epoch E/N step S/M` updates into a line with the ETA of the whole run."""

    PATTERN = re.compile(r"epoch (\d+)/(\d+) step (\d+)/(\d+)")

    def __init__(self):
        self.start: tuple[float, float] | None = None  # (time, fraction done) at the first update of this run
        self.last: tuple[int, int, float] | None = None  # (epochs, steps, fraction done) of the latest update

    def describe(self, text: str) -> str:
        match = self.PATTERN.search(text)
        if match is None:
            return text
        epoch, epochs, step, steps = map(int, match.groups())
        done = ((epoch - 1) * steps + step) / (epochs * steps)
        now = time.monotonic()
        # A new run (another length: the demo's next family) or a restart from a checkpoint starts the clock again.
        if self.last is None or self.last[:2] != (epochs, steps) or done < self.last[2]:
            self.start = (now, done)
        self.last = (epochs, steps, done)
        line = f"training: epoch {epoch}/{epochs}, step {step}/{steps}"
        elapsed, gained = now - self.start[0], done - self.start[1]
        if gained > 0 and elapsed > 3:  # (a guess from the first second or two swings wildly)
            line += f", about {format_seconds(elapsed * (1 - done) / gained)} left"
        return line


def _worker_lines(data: dict, eta: TrainingEta) -> None:
    """Ray's worker-log handler, replaced: raygen's marked lines and progress; Ray's waiting notices."""
    for line in data.get("lines", []):
        if line.startswith(MARK):
            progress().line(line[len(MARK):])
        elif line.startswith(PROGRESS):
            progress().update(eta.describe(line[len(PROGRESS):]))
        elif data.get("pid") == "autoscaler" and WAITING.search(line):
            progress().line(f"waiting for resources: {line.strip()} (the cluster is busy, too small, or scaling up)")


def quiet_ray() -> None:
    """In a driver, after ray.init: show raygen's lines only (unless verbose). Safe to call more than once."""
    if verbose():
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.remove_handler("raygen_print_logs")
    eta = TrainingEta()
    global_worker_stdstream_dispatcher.add_handler("raygen_print_logs", lambda data: _worker_lines(data, eta))
    quiet_libraries()
    _NativeStderrFilter.install()


def quiet_libraries() -> None:
    """Ray Data's console log to errors only (its file log keeps everything); Ray's own logger to errors."""
    if verbose():
        return
    importlib.import_module("ray.data")  # configures Ray Data's loggers, which are then turned down

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.ERROR)
            _write_to_current_stderr(handler)
    logging.getLogger("ray").setLevel(logging.ERROR)
    # Records of Ray's libraries propagate to the "ray" logger's own stderr handler whatever its level
    # ("Dataset ... execution finished" from a Ray Data thread): the handler itself is turned down too.
    for handler in logging.getLogger("ray").handlers:
        handler.setLevel(logging.ERROR)
        _write_to_current_stderr(handler)
    # Serve's driver-side notices ("Started Serve in namespace ...") have a logger and handler of their own.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    _drop_shutdown_notices()


class _CurrentStderr:
    """Whatever sys.stderr is when a record is written (a redirect, a test's capture), not when a handler was made."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _write_to_current_stderr(handler: logging.Handler) -> None:
    """Ray's handlers write to the sys.stderr of when they were made, which a redirect since (a test's capture)
    may have closed: a Ray Data thread's late record would then print a "--- Logging error ---" traceback."""
    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
            and not isinstance(handler.stream, _CurrentStderr):
        handler.stream = _CurrentStderr()


def _drop_shutdown_notices() -> None:
    """The raylet's error notices reach the driver through `ray._private.worker.print_to_stdstream`,
    which the error-listener thread looks up at each call: wrap it to drop SHUTDOWN_NOISE."""
    from ray._private import worker

    printer = worker.print_to_stdstream
    if getattr(printer, "raygen_filter", False):
        return

    def filtered(data, ignore_prefix: bool):
        lines = [line for line in data.get("lines", []) if not SHUTDOWN_NOISE.search(line)]
        if lines:
            printer({**data, "lines": lines}, ignore_prefix)

    filtered.raygen_filter = True
    worker.print_to_stdstream = filtered


class _NativeStderrFilter:
    """Drops NATIVE_NOISE lines that Ray's C++ core writes straight to this process's stderr (fd 2).

    fd 2 becomes a pipe; a thread copies every other line to the real stderr. At exit the pipe is
    closed and drained first, so nothing written last (a traceback) is lost.
    """

    installed = False

    @classmethod
    def install(cls) -> None:
        if cls.installed:
            return
        try:
            real = os.dup(2)
            read_end, write_end = os.pipe()
            os.dup2(write_end, 2)
            os.close(write_end)
        except OSError:  # no usable stderr: nothing to filter
            return
        cls.installed = True

        def copy() -> None:
            with os.fdopen(read_end, "rb", buffering=0) as pipe:
                pending = b""
                while chunk := pipe.read(65536):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if not NATIVE_NOISE.search(line.decode("utf-8", "replace")):
                            os.write(real, line + b"\n")
                if pending:
                    os.write(real, pending)

        thread = threading.Thread(target=copy, name="raygen-stderr-filter", daemon=True)
        thread.start()

        def drain() -> None:
            sys.stderr.flush()
            os.dup2(real, 2)  # the pipe's last writer goes: the thread reads to its end and stops
            thread.join(timeout=5)

        atexit.register(drain)
