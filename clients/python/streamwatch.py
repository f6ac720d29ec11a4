"""streamwatch pool workers in Python: a handler with ``pool = N`` keeps N of these running.

This file exists so a pool worker is a few lines and never has to know the wire protocol.
Copy it next to your worker (stdlib only, Python 3.8+) and::

    from streamwatch import jobs

    for job in jobs():               # one stream entry at a time, until stdin closes
        with job:                    # an exception fails this job; the loop goes on
            url = job.fields["url"]  # also job.key, job.id, job.db, job.attempt
            job.progress({"step": 1})
            job.ok({"size": 42})     # or job.fail("text"); the result is optional

Every job must be answered once, with ``ok`` or ``fail``; a second answer (or progress
after the answer) raises. A job still unanswered when the loop asks for the next one, or
when the worker exits, is failed with "no answer".
Inside ``with job:`` an exception fails the job with "Type: message", its traceback goes
to stderr and the loop goes on. Without ``with job:`` the exception ends the loop, as in
any Python loop: the job is failed the same way and the worker exits non-zero (the
module starts another).

Protocol (see the handler docs): the module writes one JSON line per entry to stdin;
answers and progress go to fd 3 as compact JSON lines. stdout and stderr are the log, so
print freely (stdout is made line-buffered so the log keeps pace). Import this module
before opening files, so that fd 3 is still the module's.
"""

import atexit
import fcntl
import json
import os
import select
import sys
import threading
import traceback

__all__ = ["Job", "jobs"]

_FD = 3
_lock = threading.Lock()
_current = None  # the job the loop is on, for the exception hook


def _check_fd():
    """None if fd 3 can carry replies, else why not."""
    try:
        mode = fcntl.fcntl(_FD, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return "fd 3 is not open"
    return None if mode in (os.O_WRONLY, os.O_RDWR) else "fd 3 is not open for writing"


_fd_problem = _check_fd()  # checked at import, before the worker opens files of its own
if _fd_problem is None:
    os.set_inheritable(_FD, False)  # programs the worker runs must not hold the pipe open


def _send(obj):
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    data = (line + "\n").encode("utf-8", "replace")
    with _lock:  # one line at a time, even from threads
        while data:
            try:
                data = data[os.write(_FD, data):]
            except BlockingIOError:  # fd 3 handed over non-blocking: wait for room
                select.select([], [_FD], [])


class Job:
    """One stream entry: key, id, db, attempt, fields (a dict, in stream order)."""

    def __init__(self, entry):
        self.id = entry["id"]
        self.key = entry.get("key")
        self.db = entry.get("db", 0)
        self.attempt = entry.get("attempt", 1)
        self.fields = entry.get("fields", {})
        self.answered = False

    def __repr__(self):
        return "Job(key=%r, id=%r, attempt=%r)" % (self.key, self.id, self.attempt)

    def progress(self, value):
        """Reports progress (any JSON value) while the job runs."""
        if self.answered:
            raise RuntimeError("streamwatch: job %s was already answered" % self.id)
        _send({"id": self.id, "progress": value})

    def ok(self, result=None):
        """Answers success, with an optional JSON result."""
        self._answer({"id": self.id, "ok": True} if result is None
                     else {"id": self.id, "ok": True, "result": result})

    def fail(self, error):
        """Answers failure with a text."""
        self._answer({"id": self.id, "ok": False, "error": str(error)})

    def _answer(self, reply):
        if self.answered:
            raise RuntimeError("streamwatch: job %s was already answered" % self.id)
        _send(reply)  # marked answered only once sent (a result that is not JSON raises)
        self.answered = True

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception):
            return False  # no exception, or KeyboardInterrupt/SystemExit: let it go
        traceback.print_exception(kind, exc, tb)
        if not self.answered:
            self.fail(_describe(exc))
        return True  # swallowed: the loop goes on


def _describe(exc):
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _excepthook(kind, exc, tb):
    job = _current
    if job is not None and not job.answered and isinstance(exc, Exception):
        try:
            job.fail(_describe(exc))
        except Exception:
            pass  # fd 3 gone: the module is too
    _previous_hook(kind, exc, tb)


_previous_hook = sys.excepthook


@atexit.register
def _at_exit():  # the loop was left (break, an exception) with its job unanswered
    if _current is not None and not _current.answered:
        try:
            _current.fail("no answer")
        except Exception:
            pass


def jobs():
    """Yields a Job per line on stdin until stdin closes. Exits if fd 3 is not usable."""
    if _fd_problem is not None:
        raise SystemExit("streamwatch: %s: run this worker from a handler with pool = N"
                         % _fd_problem)
    if sys.excepthook is not _excepthook:
        sys.excepthook = _excepthook
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    return _loop()


def _loop():
    global _current
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            job = Job(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit("streamwatch: not an entry line from the module (%s): %r"
                             % (e, line[:200]))
        _current = job
        yield job
        if not job.answered:
            job.fail("no answer")
    _current = None
