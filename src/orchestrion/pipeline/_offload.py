"""Running the post-processing stage in a helper process, off the RunEngine's thread.

A RunEngine calls its subscribers synchronously, and on this machine's two cores every
millisecond of work in the RunEngine's process is a millisecond of scan time.
`ProcessSink` queues documents and returns at once; a feeder thread hands them, in
order and in batches, to a helper interpreter that runs the stage.  A stop document
returns once the run has left this process; `ProcessSink.wait_catalogued` waits for the
stage to finish it.  The stage can send notes back (for instance the HDF5 file it
opened for a run), which reach ``on_note`` in this process before the run's
acknowledgement.

A helper that dies mid-run is replaced, and the new one takes its unfinished runs over
(`ProcessSink` keeps every document the helper has not confirmed; a stage that can,
``resume(run_uid, documents)``, rebuilds the run from what it kept itself plus those).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from ._placing import RunPlacer
from ._standby import adopt_standby, exit_status

logger = logging.getLogger(__name__)

FEED_BATCH = 64  # events handed to the helper at once
FEED_INTERVAL = 0.2  # s: longest a document waits before it is handed over
STOP_WAIT = 300.0  # s: longest a stop document waits for the stage to catch up
ACK = "orchestrion-ack "
NOTE = "orchestrion-note "
FED = "orchestrion-fed "  # N: the helper has handled its first N messages
LOST = "orchestrion-lost "  # UID REASON: the helper cannot finish a run it was given
RESUME = "__resume__"  # the message that hands a dead helper's run to its successor
MAX_RESUMES = 3  # a run whose helpers keep dying is given up after this many take-overs

# The helper's entry module: one the package does not import, so that `-m` does not
# find it in sys.modules already (runpy warns of that on every start).
HELPER_MODULE = "orchestrion.pipeline._helper"


class HelperProcess(Protocol):
    """A helper process as `ProcessSink` uses it: a `subprocess.Popen`, or a standby
    adopted from an earlier command (`orchestrion.pipeline._standby.AdoptedHelper`)."""

    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


# Helper processes started ahead (`start_helper`) or adopted (`adopt_helper`), by their
# command line, until a `ProcessSink` with the same command line takes one.
_ahead: dict[tuple[str, ...], HelperProcess] = {}
_ahead_lock = threading.Lock()

Note = dict[str, Any]
Report = Callable[[Note], None]
Message = tuple[int, str | None, int, str, dict[str, Any]]
"""(ticket, run uid, the document's index in its run, name, document) of a message."""


class ProcessSink:
    """Feeds a stage that lives in a helper process, made there by ``factory(argument)``.

    The helper is a fresh interpreter (``python -m orchestrion.pipeline._helper``), not
    a multiprocessing child, so it never re-imports the caller's main module.  ``factory``
    must be importable by name; ``argument`` and the documents are pickled over the
    helper's stdin by a feeder thread.  With ``on_note``, the factory is called as
    ``factory(argument, report)``: the stage calls ``report(note)`` with a JSON-able
    dict, and ``on_note(note)`` runs in this process (in the thread that reads the
    helper's answers).  The helper ends at `close`, or when this process goes away (its
    stdin closes) after handling everything it was handed.

    A stop document returns once the run's documents are in the helper's pipe: from then
    on they no longer depend on this process.  The RunEngine does not wait for the stage
    to finish the run: whoever reads the run back calls `wait_catalogued` first.

    A helper that dies (after its stage was built) is replaced at once, and the runs it
    had not finished are handed to the new one: each as a ``__resume__`` message with
    the run's documents the dead helper had not confirmed having handled (``FED``), for
    the stage's ``resume(run_uid, documents)``, and ``factory`` is then called with
    ``resuming=[run uids]``.  A run the new stage cannot take over (no ``resume``, or
    it says it cannot) is lost: `wait_catalogued` says so, and why.

    ``niceness`` > 0 lowers the helper's CPU priority once its stage is built: on a
    machine with few cores its threads otherwise preempt the RunEngine's (ADR 0205).

    ``preload`` names modules the helper imports as soon as it starts, before it is
    handed anything; with ``hold=True`` the factory (and with it the stage's side
    effects: files recovered, the catalog opened) waits for `release` or the first
    document.  Together they let a caller start the helper's seconds of imports beside
    its own set-up, before it has checked its request (ADR 0810).
    """

    def __init__(
        self,
        factory: Callable[..., Callable[[str, dict[str, Any]], Any]],
        argument: Any,
        label: str,
        on_note: Callable[[Note], Any] | None = None,
        niceness: int = 0,
        preload: Sequence[str] = (),
        hold: bool = False,
    ) -> None:
        self.label = label
        self.preload = tuple(preload)
        self._held = hold
        self.factory, self.argument, self.on_note = factory, argument, on_note  # what its helpers run
        self.niceness = niceness  # of its helper process
        self._closing = False
        # Runs handed to a helper and not yet acknowledged, and runs that never will be.
        self._state = threading.Condition()
        self._unfinished: dict[str, _Helper] = {}
        self._lost: dict[str, str] = {}  # run uid -> why it was not written
        # Which run each document belongs to, and its index there: what a successor needs.
        self._placer = RunPlacer()
        self._counts: dict[str, int] = {}  # run uid -> documents so far
        self._resumes: dict[str, int] = {}  # run uid -> take-overs so far
        self._switch = threading.Lock()  # a document is put, or the helper replaced
        self._helper = _Helper(self, hold=hold)

    def release(self) -> None:
        """Hand the held factory to the helper: its stage is built (nothing if not held)."""
        with self._switch:
            if self._held:
                self._held = False
                self._helper.give_factory()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self._held:
            self.release()
        run, index = self._place(name, doc)
        with self._switch:
            helper = self._helper
            # At a start, a helper killed an instant ago counts as dead even before its
            # reader thread has seen its pipe close.
            if helper.exited or (name == "start" and helper.process.poll() is not None):
                if self._closing or helper.failed:
                    # A helper whose stage could not be built would fail the same way again.
                    reason = f"the helper process has exited ({helper.error or _ended(helper.process)})"
                    if name == "start":
                        with self._state:
                            self._lost[str(doc.get("uid"))] = reason
                    raise RuntimeError(f"{self.label}: {reason}")
                helper = self._replace(helper)
            if run is not None and run in self._lost:
                raise RuntimeError(f"{self.label}: run {run} is not written: {self._lost[run]}")
            if name == "start":
                with self._state:
                    self._unfinished[str(doc.get("uid"))] = helper
            ticket = helper.put(name, doc, run, index)
        if name == "stop":
            self._wait_handed_over(helper, ticket, str(doc.get("run_start")))

    def _place(self, name: str, doc: dict[str, Any]) -> tuple[str | None, int]:
        """The run ``doc`` belongs to (None: no run known) and its index among the run's documents.

        A successor's replay lines the kept documents up with the run's spool by these
        indices: every kind of document the spool holds must be placed (`RunPlacer`).
        """
        run = self._placer.place(name, doc)
        if run is None:
            return None, 0
        index = self._counts.get(run, 0)
        if name == "stop":  # no more of this run
            self._counts.pop(run, None)
        else:
            self._counts[run] = index + 1
        return run, index

    def _wait_handed_over(self, helper: _Helper, ticket: int, run_uid: str) -> None:
        """Until the message ``ticket`` is in ``helper``'s pipe, or in a successor's."""
        deadline = time.monotonic() + STOP_WAIT
        while True:
            if helper.wait_written(ticket, deadline):
                return
            with self._switch:
                if self._helper is helper and helper.process.poll() is not None and not helper.failed:
                    self._replace(helper)
                successor = self._helper
            if successor is helper or time.monotonic() >= deadline:
                raise RuntimeError(f"{self.label}: run {run_uid} could not be handed to the helper process")
            # The successor was handed the run's documents first, in its resume messages.
            helper, ticket = successor, successor.resumes_end

    def _replace(self, dead: _Helper) -> _Helper:
        """A new helper for the dead one, given its unfinished runs (``_switch`` held)."""
        if self._helper is not dead:
            return self._helper
        dead.abandon()
        carried = dead.unconfirmed()
        with self._state:
            runs = [uid for uid, helper in self._unfinished.items() if helper is dead]
            for uid in list(runs):
                self._resumes[uid] = self._resumes.get(uid, 0) + 1
                if self._resumes[uid] > MAX_RESUMES:
                    runs.remove(uid)
                    del self._unfinished[uid]
                    self._lost[uid] = f"its post-processing process died {MAX_RESUMES + 1} times"
        logger.warning("%s: the helper process exited (%s); a new one takes over %s", self.label,
                       _ended(dead.process), ", ".join(runs) or "the next run")  # fmt: skip
        helper = self._helper = _Helper(self, resuming=runs)
        for uid in runs:
            documents = [(index, name, doc) for _, run, index, name, doc in carried if run == uid]
            helper.put(RESUME, {"run": uid, "documents": documents}, None, 0)
            with self._state:
                self._unfinished[uid] = helper
        helper.resumes_end = helper.given
        with self._state:
            self._state.notify_all()
        return helper

    def wait_catalogued(self, run_uid: str | None = None, timeout: float = STOP_WAIT) -> bool:
        """Wait until the helper has finished ``run_uid`` (default: every run handed over).

        False when it did not within ``timeout`` or cannot (its stage failed to build,
        or it exited first); the reason is logged.
        """
        deadline = time.monotonic() + timeout
        while True:
            helper = self._helper
            if helper.exited and not helper.failed and not self._closing:
                with self._switch:
                    self._replace(helper)
            with self._state:
                self._forget_dead_helpers()
                if run_uid is not None:
                    if run_uid in self._lost:
                        logger.error("%s: run %s was not written: %s", self.label, run_uid, self._lost[run_uid])
                        return False
                    if run_uid not in self._unfinished:
                        return True
                elif not self._unfinished:
                    for uid, reason in self._lost.items():
                        logger.error("%s: run %s was not written: %s", self.label, uid, reason)
                    return not self._lost
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.error("%s: run %s not written within %.0f s", self.label,
                                 run_uid or ", ".join(sorted(self._unfinished)), timeout)  # fmt: skip
                    return False
                self._state.wait(timeout=min(remaining, 0.2))

    # -- answers from a helper, in its reader thread -----------------------------------

    def helper_answered(self, helper: _Helper, answer: str) -> None:
        """A run acknowledged by ``helper``, or (anything else) what went wrong there."""
        with self._state:
            if answer in self._unfinished:
                del self._unfinished[answer]
            else:
                helper.error = answer
                logger.error("%s: %s", self.label, answer)
            self._state.notify_all()

    def helper_lost(self, run_uid: str, reason: str) -> None:
        """The helper cannot finish ``run_uid`` (a run it was to take over)."""
        with self._state:
            self._unfinished.pop(run_uid, None)
            self._lost[run_uid] = reason
            self._state.notify_all()

    def helper_exited(self, helper: _Helper) -> None:
        """``helper``'s answers have ended: nothing more will be acknowledged."""
        with self._state:
            helper.exited = True
            self._state.notify_all()

    def _forget_dead_helpers(self) -> None:
        """Runs of a helper that will not be replaced are lost (called with ``_state`` held):
        its stage could not be built, or this sink is closing."""
        for uid, helper in list(self._unfinished.items()):
            if helper.failed or (helper.exited and self._closing):
                del self._unfinished[uid]
                self._lost[uid] = helper.error or f"the helper process exited ({_ended(helper.process)})"

    def lost_runs(self) -> dict[str, str]:
        """Runs handed over that will not be finished, with the reason."""
        with self._state:
            self._forget_dead_helpers()
            return dict(self._lost)

    def helper_noted(self, text: str) -> None:
        if self.on_note is None:
            return
        try:
            self.on_note(json.loads(text))
        except Exception:  # a note is bookkeeping: it must not stop the acknowledgements
            logger.exception("%s: a note from the helper could not be taken: %s", self.label, text)

    def close(self) -> None:
        self._closing = True
        if self._held:  # handed nothing: only imports to cut short
            self._helper.process.terminate()
        self._helper.close()


def helper_command(niceness: int, preload: Sequence[str]) -> tuple[str, ...]:
    """The command line of a helper for these arguments (what a standby is keyed by)."""
    arguments = [argument for module in preload for argument in ("--preload", module)]
    return (sys.executable, "-m", HELPER_MODULE, "--niceness", str(niceness), *arguments)


def _ended(process: HelperProcess) -> str:
    """How ``process`` ended, once it has."""
    process.wait()
    return exit_status(process)


def _spawn(command: Sequence[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _helpers.add(process)
    return process


# A forked child (the pre-processing's worker processes, ADR 0820) inherits every file
# descriptor, among them this process's ends of its helpers' pipes.  A child that outlived
# this process would keep a helper's stdin open, and the helper would wait for the end
# of its input for ever instead of finishing the run (found: `orchestrion run` killed,
# its compiling workers still alive; the shell's exit waiting on its helper).  In a
# forked child those descriptors are pointed at /dev/null: not closed, because the file
# objects that own them stay in the child, and a flush of this process's buffered bytes
# must not reach the pipe.
_helpers: weakref.WeakSet[HelperProcess] = weakref.WeakSet()


def _detach_helper_pipes() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for process in list(_helpers):
            for pipe in (process.stdin, process.stdout):
                if pipe is not None and not pipe.closed:
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(null, pipe.fileno())
    finally:
        os.close(null)


os.register_at_fork(after_in_child=_detach_helper_pipes)


def start_helper(niceness: int = 0, preload: Sequence[str] = ()) -> None:
    """Start a helper process now, for the next `ProcessSink` made with these arguments.

    It imports ``preload`` and then waits for its first message, as a held sink's helper
    does, so a caller can start those seconds of imports before it has imported what
    makes the sink (ADR 0813).  One that no sink adopts is terminated at exit, having
    been handed nothing.
    """
    command = helper_command(niceness, preload)
    with _ahead_lock:
        if command in _ahead:
            return
        _ahead[command] = _spawn(command)
        if len(_ahead) == 1:
            atexit.register(_end_helpers_ahead)


def adopt_helper(niceness: int, preload: Sequence[str], home: Path) -> bool:
    """Adopt the standby helper an earlier command left for these arguments (ADR 0814),
    for the next `ProcessSink` made with them; False when there is none."""
    command = helper_command(niceness, preload)
    with _ahead_lock:
        if command in _ahead:
            return True
    adopted = adopt_standby(command, home)
    if adopted is None:
        return False
    with _ahead_lock:
        _ahead[command] = adopted
        _helpers.add(adopted)
        if len(_ahead) == 1:
            atexit.register(_end_helpers_ahead)
    return True


def _adopt_or_spawn(command: tuple[str, ...]) -> HelperProcess:
    with _ahead_lock:
        process = _ahead.pop(command, None)
    if process is not None and process.poll() is None:
        return process
    return _spawn(command)


def _end_helpers_ahead() -> None:
    with _ahead_lock:
        left = list(_ahead.values())
        _ahead.clear()
    for process in left:  # handed nothing: only imports to cut short
        process.terminate()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


class _Helper:
    """One helper process: its pipe, the thread that feeds it and the one that reads its answers.

    Every message it was given stays here until the helper confirms it has handled it
    (``FED``), so that a successor can be given what this one may have lost.
    """

    def __init__(self, sink: ProcessSink, resuming: list[str] | None = None, hold: bool = False) -> None:
        self.sink = sink
        # One started ahead (`start_helper`) or adopted has only imported: it is what a
        # new one would be.
        self.process: HelperProcess = _adopt_or_spawn(helper_command(sink.niceness, sink.preload))
        # Documents are handed over in batches: waking the feeder thread for every event
        # cost the RunEngine thread about 0.3 ms an event in GIL hand-offs.
        self._pending: list[Message] = []
        self._retained: collections.deque[Message] = collections.deque()  # in the pipe, not yet confirmed
        self._lock = threading.Lock()
        self._handed_over = threading.Condition(self._lock)
        self.given = 0  # messages given to this helper, the factory's included
        self._written = 0  # messages written to its pipe
        self._feed_failed = False
        self._wake = threading.Event()
        self._closing = False
        self.error: str | None = None  # what the helper said went wrong (its stage could not be built)
        self.exited = False  # its stdout closed: checked per document without a syscall
        self.ready = False  # its stage was built
        self.resumes_end = 0  # the ticket of its last resume message
        label = sink.label
        self._feeder = threading.Thread(target=self._feed, name=f"orchestrion-{label}-feed", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"orchestrion-{label}-acks", daemon=True)
        # Not waited for: the helper imports while the session opens and the run starts;
        # documents wait here and in the pipe.
        self._resuming = list(resuming or [])
        self._feeder.start()
        self._reader.start()
        if not hold:
            self.give_factory()

    def give_factory(self) -> None:
        """The stage's factory, the helper's first message."""
        sink = self.sink
        factory = {"factory": sink.factory, "argument": sink.argument, "notes": sink.on_note is not None,
                   "resuming": self._resuming}  # fmt: skip
        self.put("__factory__", factory, None, 0)

    @property
    def failed(self) -> bool:
        """Its stage could not be built: a successor would fail the same way."""
        return self.error is not None and not self.ready

    def put(self, name: str, doc: dict[str, Any], run: str | None, index: int) -> int:
        """Queue a message for the helper; its ticket (`wait_written`)."""
        with self._lock:
            self.given += 1
            ticket = self.given
            self._pending.append((ticket, run, index, name, doc))
            # Once per batch: the feeder may take a moment to empty it.
            urgent = name not in ("event", "event_page") or len(self._pending) == FEED_BATCH
        if urgent:
            self._wake.set()
        return ticket

    def wait_written(self, ticket: int, deadline: float) -> bool:
        """Whether message ``ticket`` reached the helper's pipe (False: the feed failed, or too late)."""
        with self._handed_over:
            # In short slices: a helper that died does not hold up the RunEngine.
            while self._written < ticket and not self._feed_failed and time.monotonic() < deadline:
                self._handed_over.wait(timeout=0.2)
            return self._written >= ticket

    def confirm(self, handled: int) -> None:
        """The helper has handled its first ``handled`` messages: they need not be kept."""
        with self._lock:
            while self._retained and self._retained[0][0] <= handled:
                self._retained.popleft()

    def unconfirmed(self) -> list[Message]:
        """Every message the helper may not have handled, in order (after `abandon`)."""
        with self._lock:
            return [*self._retained, *self._pending]

    def abandon(self) -> None:
        """The helper is dead: its feeder stops, its messages stay for `unconfirmed`."""
        with self._lock:
            self._closing = True
            self._feed_failed = True
            self._handed_over.notify_all()
        self._wake.set()
        with contextlib.suppress(OSError):
            self.process.kill()  # already dead, or dying
        self.process.wait()
        self._feeder.join(timeout=5)
        self._reader.join(timeout=5)  # its pipe has ended with the process
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _feed(self) -> None:
        assert self.process.stdin is not None
        stream = self.process.stdin
        try:
            while True:
                # Wakes for anything but events, for a full batch, or after the interval,
                # so a slow scan still reaches the catalog within about that interval.
                self._wake.wait(timeout=FEED_INTERVAL)
                self._wake.clear()
                with self._lock:
                    if self._feed_failed:
                        return
                    batch, self._pending = self._pending, []
                    self._retained.extend(batch)
                    closing = self._closing
                if batch:
                    pickle.dump([(name, doc) for _, _, _, name, doc in batch], stream,
                                protocol=pickle.HIGHEST_PROTOCOL)  # fmt: skip
                    stream.flush()
                    with self._handed_over:
                        self._written = batch[-1][0]
                        self._handed_over.notify_all()
                if closing:
                    return
        except (BrokenPipeError, OSError, pickle.PicklingError):
            if not self._closing:
                logger.warning("%s: documents can no longer reach the helper process", self.sink.label)
            with self._handed_over:
                self._feed_failed = True
                self._handed_over.notify_all()
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        sink = self.sink
        for line in self.process.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith(FED):
                self.confirm(int(text[len(FED) :]))
            elif text.startswith(NOTE):
                sink.helper_noted(text[len(NOTE) :])
            elif text.startswith(LOST):
                uid, _, reason = text[len(LOST) :].partition(" ")
                sink.helper_lost(uid, reason)
            elif text == f"{ACK}ready":
                self.ready = True
            elif text.startswith(ACK):
                sink.helper_answered(self, text[len(ACK) :])
        sink.helper_exited(self)

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._wake.set()
        self._feeder.join(timeout=STOP_WAIT)
        try:
            self.process.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


class _Answers:
    """The helper's acknowledgements, on its original stdout.

    When the feeding process is gone they have no reader: the helper then goes on
    writing what it was handed, without acknowledging.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def say(self, text: str) -> None:
        self._write(f"{ACK}{text}\n")

    def fed(self, handled: int) -> None:
        self._write(f"{FED}{handled}\n")

    def lost(self, run_uid: str, reason: str) -> None:
        self._write(f"{LOST}{run_uid} {' '.join(reason.split())}\n")

    def note(self, note: Note) -> None:
        """Sends ``note`` to the feeding process's ``on_note`` (before the run's acknowledgement)."""
        self._write(f"{NOTE}{json.dumps(note, default=str)}\n")

    def _write(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            # One unbuffered write per line (whole, up to the pipe's atomic size), so
            # nothing is left pending to fail again at exit.
            os.write(self._fd, line.encode())
        except OSError:  # BrokenPipeError: nobody listens any more
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _lower_priority(niceness: int) -> None:
    """Every thread of this process at ``niceness``: on Linux niceness is per thread.

    Threads already exist (numpy's BLAS starts one at import); those started later
    inherit the main thread's.
    """
    try:
        threads = [int(task.name) for task in os.scandir("/proc/self/task")]
    except FileNotFoundError:  # no procfs: the main thread only
        threads = [0]
    for thread in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.setpriority(os.PRIO_PROCESS, thread, niceness)


def preload_modules(preload: Sequence[str]) -> None:
    """Import ``preload``: only a head start, so a module that fails here fails again,
    reported, in the factory."""
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception:
            logger.debug("helper process: preloading %s failed", module, exc_info=True)


def serve(niceness: int = 0, preload: Sequence[str] = ()) -> None:
    """The helper's side: build the stage, feed it, acknowledge each stop on stdout.

    The imports (``preload`` first) and the stage's set-up run at full priority: the
    caller waits for them and no run goes on yet.  The documents are handled at
    ``niceness`` (see `_handle`).
    """
    preload_modules(preload)
    # Ctrl-C in a terminal reaches the whole process group, and so does the hang-up of a
    # closed terminal: the first is the RunEngine's to handle (pause), and after either
    # this helper must go on writing what it was given until its stdin ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Acknowledgements go to the original stdout; anything else the stage prints goes
    # to stderr, so it cannot be taken for one.
    answers = _Answers(os.dup(sys.stdout.fileno()))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    source = sys.stdin.buffer
    sink: Callable[[str, dict[str, Any]], Any] | None = None
    handled = 0
    try:
        while True:
            try:
                batch: list[tuple[str, dict[str, Any]]] = pickle.load(source)
            except (EOFError, pickle.UnpicklingError):
                # Closed, or the feeding process is gone (perhaps mid-batch: a batch is
                # handed over whole or not at all, so a torn one was never promised).
                return
            for name, doc in batch:
                sink = _handle(name, doc, sink, answers, niceness)
                if sink is None:
                    return
            # After the whole batch: a stage that keeps what it is given (a spool) has it.
            handled += len(batch)
            answers.fed(handled)
    finally:
        close = getattr(sink, "close", None)
        if callable(close):
            close()


def _handle(
    name: str,
    doc: dict[str, Any],
    sink: Callable[[str, dict[str, Any]], Any] | None,
    answers: _Answers,
    niceness: int = 0,
) -> Callable[[str, dict[str, Any]], Any] | None:
    """One message in the helper; returns the stage (None: it could not be built)."""
    if name == "__factory__":
        try:
            factory = doc["factory"]
            arguments = [doc["argument"], answers.note] if doc.get("notes") else [doc["argument"]]
            extra = {"resuming": doc["resuming"]} if doc.get("resuming") else {}
            built: Callable[[str, dict[str, Any]], Any] = factory(*arguments, **extra)
        except Exception as exc:
            logger.exception("helper process: the stage could not be built")
            answers.say(f"{type(exc).__name__}: {exc}")
            return None
        if niceness > 0:  # before any document, and with every thread the stage started
            _lower_priority(niceness)
        answers.say("ready")
        return built
    assert sink is not None
    if name == RESUME:
        _resume(sink, str(doc["run"]), doc["documents"], answers)
        return sink
    try:
        sink(name, doc)
    except Exception:
        logger.exception("helper process: a %s document failed", name)
    if name == "stop":
        answers.say(str(doc.get("run_start")))
    return sink


def _resume(
    sink: Callable[[str, dict[str, Any]], Any], run_uid: str, documents: list[tuple[int, str, dict[str, Any]]],
    answers: _Answers,
) -> None:  # fmt: skip
    """Take over ``run_uid`` from a helper that died: ``sink.resume`` rebuilds it."""
    resume = getattr(sink, "resume", None)
    if not callable(resume):
        answers.lost(run_uid, "its post-processing process died, and the stage cannot take a run over")
        return
    try:
        stopped = resume(run_uid, documents)
    except Exception as exc:
        logger.exception("helper process: run %s could not be taken over", run_uid)
        answers.lost(run_uid, f"its post-processing process died, and it could not be taken over: {exc}")
        return
    if stopped:
        answers.say(run_uid)
