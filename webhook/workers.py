"""`serve --workers N`: a supervisor process and N worker processes, each running the whole server.

One Python process reviews on one core. With N workers the port is served by N processes, each with its own
event loop, informer caches, certificate reloader and metrics (`make_app` as in a single server), so a node
with N cores answers N reviews at once.

- **Start.** The supervisor checks what the workers would refuse (certificate files, kubeconfig: one line,
  exit 2, as a single server), reserves the port (`bind_anchors`), makes the shared metrics board, and forks
  the workers. Python modules are loaded before the fork and the heap is frozen (`gc.freeze`), so the
  workers share those pages; nothing else runs yet (no thread, no event loop, no informer), which is what
  makes `fork` safe.
- **The port.** Each worker listens on its own socket in the port's SO_REUSEPORT group: the kernel spreads
  new connections over the listening workers by a hash of their addresses, and a worker that is gone (dead,
  or restarting) is out of the group, so no connection waits for it. (One inherited listening socket would
  let whichever worker wakes first accept a whole burst of connections: asyncio accepts up to 100 per
  wake-up, and the apiserver's keep-alive connections would all end up on one worker.) The supervisor
  keeps a bound socket that does not listen (an anchor), so the port stays reserved while a worker
  restarts, and binding it without SO_REUSEPORT first tells at start, as a single server does, that
  someone else holds the port.
- **Supervision.** SIGTERM or SIGINT to the supervisor sends SIGTERM to every worker, which drains like a
  single server (stops listening, finishes the reviews in flight, stops its caches) and exits; a worker
  still there after `stop_seconds` is killed. Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole
  process group; the supervisor decides) and stop by themselves if the supervisor disappears (a pipe
  that only the supervisor holds open reaches end of file). A worker that exits on its own is started again
  after a back-off that doubles with each quick exit (logged with its exit code). A worker that exits
  before it listens has failed to start: the first such failure with exit code 2 (the worker's settings
  error: certificate files, kubeconfig) while no worker has ever started ends the server at once with that
  error; otherwise the server ends, exit code 1, after `max_start_failures` failures of one worker in a
  row. Either way the error is one line.
- **Readiness.** Each worker syncs its own caches; `/readyz` describes the worker that took the connection
  (and says which: `worker.index`, `worker.pid`).
- **Metrics.** See `webhook.metrics.WorkerMetrics`: `/metrics` on any worker reports the whole server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from kube.client import KubeConfigError
from policies.build import engine_build
from telemetry.board import MetricBoard
from telemetry.logoutput import flush_periodically, install_log_output, open_line_atomic_stderr
from webhook.metrics import MetricShare
from webhook.server import check_startable, make_app, running_task, start_server
from webhook.settings import ServeSettings
from webhook.tlsreload import TLSFilesError

logger = logging.getLogger(__name__)

EXIT_SETTINGS = 2
"""A worker's exit code for an error in its settings (certificate files, kubeconfig, the port)."""
EXIT_FAILED = 1
HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
"""What the supervisor handles while it runs (its loop reads them from a wakeup socket)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before starting a worker again after its `failures`-th quick exit in a row."""

    initial: float = 0.5
    ceiling: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.ceiling, self.initial * 2.0 ** max(failures - 1, 0)))


@dataclass(frozen=True, slots=True)
class SupervisorPolicy:
    backoff: Backoff = Backoff()
    max_start_failures: int = 5
    """Failures to start of one worker in a row after which the server gives up."""
    stable_seconds: float = 30.0
    """A worker that ran this long before it exited starts its back-off afresh."""
    stop_seconds: float = 25.0
    """How long a stop waits for the workers to drain before it kills them (within Kubernetes' default
    30 s termination grace period)."""


class WorkersFailed(Exception):
    """The workers could not be kept running; one line, and the exit code the command should give."""

    def __init__(self, reason: str, *, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.reason


def describe_exit(code: int) -> str:
    """`exit code 2` or `killed by SIGKILL` for a `waitstatus_to_exitcode` value."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def one_line(text: str) -> str:
    return " ".join(text.split())


class Channel:
    """A worker's end of its status pipe to the supervisor: `started` once it listens, or why it failed."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(self._fd, (line + "\n").encode("utf-8", "backslashreplace")[:4000])

    def started(self) -> None:
        self._send("started")

    def failed(self, reason: str) -> None:
        self._send("failed " + one_line(reason))


WorkerTarget = Callable[[int, Channel, int], int]
"""What a worker process runs: (its index, its channel, the supervisor's lifeline fd) -> its exit code."""


@dataclass
class _Slot:
    index: int
    pid: int = 0
    status_fd: int = -1
    status_buffer: bytes = b""
    started: bool = False
    started_at: float = 0.0
    start_failures: int = 0
    exits: int = 0
    restart_at: float | None = None
    reason: str = ""
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Forks `count` workers running `target`, keeps them running, stops them on SIGTERM/SIGINT.

    `run()` returns the exit code of a stop (0 when every worker drained and exited 0) or raises
    `WorkersFailed`. It handles SIGTERM, SIGINT and SIGCHLD while it runs (and restores them after);
    `before_fork` runs before each fork (flush the log output), `announce` after each event that logs.
    """

    def __init__(
        self,
        count: int,
        target: WorkerTarget,
        *,
        policy: SupervisorPolicy | None = None,
        before_fork: Callable[[], None] | None = None,
        announce: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if count < 1:
            raise ValueError("a supervisor needs at least one worker")
        self.policy = policy or SupervisorPolicy()
        self._target = target
        self._before_fork = before_fork or (lambda: None)
        self._announce = announce or (lambda: None)
        self._clock = clock
        self.slots = [_Slot(index) for index in range(count)]
        self._selector: selectors.BaseSelector | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._lifeline = (-1, -1)
        self._stopping = False
        self._stop_deadline = 0.0
        self._killed = False
        self._fatal: WorkersFailed | None = None
        self._ever_started = False

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> int:
        previous = self._install_signals()
        self._lifeline = os.pipe()
        try:
            for slot in self.slots:
                if not self._stopping:
                    self._spawn(slot)
            while self._live() or not self._stopping:
                self._wait_for_events()
                self._reap()
                now = self._clock()
                if self._stopping:
                    if now >= self._stop_deadline and not self._killed:
                        self._kill_all()
                    continue
                for slot in self.slots:
                    if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                        self._spawn(slot)
        finally:
            self._close()
            self._restore_signals(previous)
        if self._fatal is not None:
            raise self._fatal
        # A worker still starting when the stop came has no handler yet: SIGTERM ends it, which is fine.
        clean = (0, -signal.SIGTERM)
        failed = self._killed or any(
            slot.exit_codes and slot.exit_codes[-1] not in clean for slot in self.slots
        )
        return EXIT_FAILED if failed else 0

    def _live(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.pid]

    def _wait_for_events(self) -> None:
        assert self._selector is not None
        now = self._clock()
        deadlines = [slot.restart_at for slot in self.slots if slot.pid == 0 and slot.restart_at is not None]
        if self._stopping:
            deadlines = [self._stop_deadline]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        timeout = 1.0 if timeout is None else min(timeout, 1.0)  # reaping does not rely on SIGCHLD alone
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._read_signals()
            else:
                self._read_status(key.data)

    # -- signals ----------------------------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        self._selector = selectors.DefaultSelector()
        self._selector.register(reader, selectors.EVENT_READ, None)
        previous: dict[int, Any] = {}
        for number in HANDLED_SIGNALS:
            previous[number] = signal.signal(number, _note_signal)
        previous[-1] = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for number, handler in previous.items():
            signal.signal(number, handler)

    def _read_signals(self) -> None:
        assert self._wakeup is not None
        try:
            data = self._wakeup[0].recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for number in data:
            if number in (signal.SIGTERM, signal.SIGINT):
                self._request_stop(signal.Signals(number).name)

    def _request_stop(self, why: str) -> None:
        if self._stopping:
            if not self._killed:
                logger.warning("second %s while stopping: killing the workers", why)
                self._kill_all()
            return
        self._stopping = True
        self._stop_deadline = self._clock() + self.policy.stop_seconds
        live = self._live()
        # Giving up is told in one line by whoever runs the supervisor (`WorkersFailed`); the stop is quiet.
        level = logging.DEBUG if self._fatal is not None else logging.INFO
        logger.log(level, "stopping on %s workers=%d", why, len(live))
        self._announce()
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        self._killed = True
        for slot in self._live():
            logger.warning("worker index=%d pid=%d did not stop in time: killed", slot.index, slot.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGKILL)
        self._announce()

    # -- workers ----------------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        reader, writer = os.pipe()
        self._before_fork()
        gc.freeze()  # what is alive now is shared with the child; its collections leave those pages alone
        # Until the child has left the supervisor's handlers behind, a signal sent to it (a stop that comes
        # at once) would reach the supervisor's wakeup socket as if the supervisor had received it: block
        # them over the fork; the child takes a pending one with its own handlers.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(reader)
            os.close(writer)
            slot.started, slot.reason = False, f"cannot fork: {error.strerror or error}"
            self._exited(slot, 0, EXIT_FAILED)
            return
        if pid == 0:  # the worker: it never returns into the supervisor's code
            code = EXIT_FAILED
            try:
                os.close(reader)
                self._enter_child()
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                code = self._target(slot.index, Channel(writer), self._lifeline[0])
            except BaseException as error:
                Channel(writer).failed(f"{type(error).__name__}: {error}")
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(writer)
        os.set_blocking(reader, False)
        slot.pid, slot.status_fd, slot.status_buffer = pid, reader, b""
        slot.started, slot.restart_at, slot.reason = False, None, ""
        assert self._selector is not None
        self._selector.register(reader, selectors.EVENT_READ, slot)

    def _enter_child(self) -> None:
        """Leave the supervisor's signal handling and descriptors behind."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self._selector is not None:
            self._selector.close()
        if self._wakeup is not None:
            for end in self._wakeup:
                end.close()
        os.close(self._lifeline[1])
        for other in self.slots:
            if other.status_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(other.status_fd)

    def _read_status(self, slot: _Slot) -> None:
        """Take what the worker wrote since the last read; at end of file, close its pipe."""
        while slot.status_fd >= 0:
            try:
                data = os.read(slot.status_fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self._close_status(slot)
                return
            slot.status_buffer += data
            *lines, slot.status_buffer = slot.status_buffer.split(b"\n")
            for raw in lines:
                self._take_status(slot, raw.decode("utf-8", "replace"))

    def _take_status(self, slot: _Slot, line: str) -> None:
        if line == "started":
            slot.started, slot.started_at = True, self._clock()
            self._ever_started = True
            logger.info("worker listening index=%d pid=%d", slot.index, slot.pid)
            self._announce()
        elif line.startswith("failed "):
            slot.reason = line.removeprefix("failed ")

    def _close_status(self, slot: _Slot) -> None:
        if slot.status_fd < 0:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(slot.status_fd)
        os.close(slot.status_fd)
        slot.status_fd = -1

    def _reap(self) -> None:
        for slot in self._live():
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0
            if pid == 0:
                continue
            self._read_status(slot)  # what it said before it exited
            self._close_status(slot)
            slot.pid = 0
            self._exited(slot, pid, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, pid: int, code: int) -> None:
        slot.exit_codes.append(code)
        if self._stopping:
            level = logging.DEBUG if self._fatal is not None else logging.INFO
            logger.log(level, "worker stopped index=%d pid=%d %s", slot.index, pid, describe_exit(code))
            self._announce()
            return
        now = self._clock()
        how = describe_exit(code)
        if not slot.started:
            slot.start_failures += 1
            reason = slot.reason or how
            if code == EXIT_SETTINGS and not self._ever_started:
                self._give_up(WorkersFailed(reason, exit_code=EXIT_SETTINGS))
                return
            if slot.start_failures >= self.policy.max_start_failures:
                self._give_up(
                    WorkersFailed(
                        f"worker {slot.index} failed to start {slot.start_failures} times in a row "
                        f"(last: {reason}{'' if reason == how else f', {how}'})"
                    )
                )
                return
            failures = slot.start_failures
        else:
            slot.start_failures = 0
            if now - slot.started_at >= self.policy.stable_seconds:
                slot.exits = 0
            slot.exits += 1
            failures = slot.exits
        delay = self.policy.backoff.delay(failures)
        slot.restart_at = now + delay
        logger.warning(
            "worker exited index=%d pid=%d %s%s%s; starting it again in %.1f s",
            slot.index,
            pid,
            how,
            "" if slot.started else " before it listened",
            f": {slot.reason}" if slot.reason else "",
            delay,
        )
        self._announce()

    def _give_up(self, failure: WorkersFailed) -> None:
        self._fatal = failure
        self._request_stop("a worker that cannot start")

    def _close(self) -> None:
        for slot in self.slots:
            self._close_status(slot)
        for end in self._lifeline:
            with contextlib.suppress(OSError):
                os.close(end)
        if self._selector is not None:
            self._selector.close()
        if self._wakeup is not None:
            for sock in self._wakeup:
                sock.close()


def _note_signal(number: int, frame: object) -> None:
    """A signal's only effect is the byte `set_wakeup_fd` writes; the loop reads it."""


# -- the port ---------------------------------------------------------------------------------------------
def bind_anchors(host: str, port: int) -> list[socket.socket]:
    """Reserve `host:port` (every address `host` resolves to): bound, not listening, SO_REUSEPORT set after
    the bind, so the bind fails if anyone holds the port and the workers can join it. Port 0 picks one
    free port for all the addresses. Raises OSError as binding a listening socket would."""
    anchors: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
        seen = set()
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            anchor = socket.socket(family, kind, proto)
            anchors.append(anchor)
            anchor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                anchor.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(anchors) > 1:
                address = (address[0], anchors[0].getsockname()[1], *address[2:])
            anchor.bind(address)
            anchor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except BaseException:
        for anchor in anchors:
            anchor.close()
        raise
    if not anchors:
        raise OSError(errno.EADDRNOTAVAIL, f"{host} resolves to no address")
    return anchors


# -- the worker -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What every worker process needs, made by the supervisor before it forks."""

    settings: ServeSettings
    board: MetricBoard
    anchors: tuple[socket.socket, ...]
    log_level: int


def serve_worker(setup: WorkerSetup, index: int, channel: Channel, lifeline: int) -> int:
    """One worker: the whole server on the shared port, until SIGTERM or the supervisor is gone."""
    for anchor in setup.anchors:
        anchor.close()
    output = install_log_output(setup.log_level, stream=open_line_atomic_stderr())
    settings = setup.settings
    try:
        try:
            app = make_app(settings, share=MetricShare(setup.board, index))
        except (TLSFilesError, KubeConfigError) as error:
            channel.failed(str(error))
            return EXIT_SETTINGS
        try:
            asyncio.run(_serve(app, settings, index, channel, lifeline, output))
        except _ListenError as error:
            channel.failed(str(error))
            return EXIT_SETTINGS
        return 0
    except Exception as error:
        logger.exception("worker index=%d failed", index)
        channel.failed(f"{type(error).__name__}: {error}")
        return EXIT_FAILED
    finally:
        output.flush()


class _ListenError(Exception):
    pass


async def _serve(
    app: web.Application,
    settings: ServeSettings,
    index: int,
    channel: Channel,
    lifeline: int,
    output: logging.Handler,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def supervisor_gone() -> None:
        with contextlib.suppress(OSError):
            if os.read(lifeline, 1):
                return
        loop.remove_reader(lifeline)
        logger.warning("worker index=%d: the supervisor is gone; stopping", index)
        stop.set()

    loop.add_reader(lifeline, supervisor_gone)
    async with running_task(flush_periodically(output), "log-flush"):
        try:
            runner, _ = await start_server(app, host=settings.host, port=settings.port, reuse_port=True)
        except OSError as error:
            raise _ListenError(
                f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}"
            ) from None
        try:
            channel.started()
            await stop.wait()
            logger.info("worker stopping index=%d pid=%d", index, os.getpid())
        finally:
            await runner.cleanup()


# -- the command ------------------------------------------------------------------------------------------
def run_workers(settings: ServeSettings, *, log_level: int, output: logging.Handler) -> int:
    """`serve --workers N` (N = `settings.workers`): returns the exit code of a stop.

    Raises what a single server would before it listens (`TLSFilesError`, `KubeConfigError`), each one
    line, and `WorkersFailed` when the port cannot be had (exit code 2) or the workers cannot be kept
    running.
    """
    check_startable(settings)
    try:
        anchors = bind_anchors(settings.host, settings.port)
    except OSError as error:
        raise WorkersFailed(
            f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}",
            exit_code=EXIT_SETTINGS,
        ) from None
    port = anchors[0].getsockname()[1]
    board = MetricBoard(settings.workers)
    setup = WorkerSetup(replace(settings, port=port), board, tuple(anchors), log_level)
    logger.info(
        "serving host=%s port=%d workers=%d services=%s pid=%d engine=%s",
        settings.host,
        port,
        settings.workers,
        "kubernetes" if settings.kube is not None else f"static({len(settings.services)})",
        os.getpid(),
        engine_build(),
    )
    supervisor = Supervisor(
        settings.workers,
        lambda index, channel, lifeline: serve_worker(setup, index, channel, lifeline),
        before_fork=output.flush,
        announce=output.flush,
    )
    try:
        return supervisor.run()
    finally:
        for anchor in anchors:
            anchor.close()
        board.close()
