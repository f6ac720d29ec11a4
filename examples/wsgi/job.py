#!/usr/bin/env python3
"""The job of examples/wsgi: one run of this script per entry of the stream `thumbs`.

streamwatch starts it with the entry's fields as one JSON object on stdin
({"url": "https://..."}) and STREAMWATCH_ID, STREAMWATCH_ATTEMPT and
STREAMWATCH_REDIS_URL (the server that runs it, in the entry's database) in its
environment. It makes a (pretend) thumbnail: it stores it in Redis under `thumb:<id>`,
reports progress and a result on fd 3 (STREAMWATCH.JOB shows them), prints what it
does (the job's output) and exits 0, which acknowledges the entry. An entry with a
field `fail` fails every attempt (exit 1): it is retried, then dead-lettered.

By hand, without streamwatch (fd 3 to the terminal):

    echo '{"url": "https://example.com/a.jpg"}' | STREAMWATCH_ID=1-0 \
        STREAMWATCH_REDIS_URL=redis://127.0.0.1:6379/0 python3 job.py 3>&1
"""

import fcntl
import json
import os
import sys


def open_reports():
    """fd 3 as a line-buffered text file, or None when the job was given none.

    Checked first thing, before anything opens a file or a socket: if fd 3 was not
    open, the next file opened would get it, and reports would land there.
    """
    try:
        mode = fcntl.fcntl(3, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return None
    if mode not in (os.O_WRONLY, os.O_RDWR):
        return None
    return os.fdopen(3, "w", buffering=1)


REPORTS = open_reports()

import redis  # noqa: E402 (after fd 3 is ours)


def report(**line):
    """One line on fd 3: {"progress": ...} or {"result": ...}."""
    if REPORTS is not None:
        REPORTS.write(json.dumps(line) + "\n")


def main():
    fields = json.load(sys.stdin)
    entry_id = os.environ["STREAMWATCH_ID"]
    attempt = os.environ.get("STREAMWATCH_ATTEMPT", "1")
    url = fields.get("url", "")
    print(f"thumb {entry_id}: {url} (attempt {attempt})", flush=True)
    report(progress={"percent": 0})
    if "fail" in fields:
        print(f"thumb {entry_id}: cannot fetch {url}", file=sys.stderr)
        return 1  # a failed attempt: retried after a backoff, then dead-lettered

    # The work, written back to the server that runs the job (redis:// or unix://).
    r = redis.Redis.from_url(os.environ["STREAMWATCH_REDIS_URL"])
    report(progress={"percent": 50})
    key = f"thumb:{entry_id}"
    r.set(key, json.dumps({"url": url, "size": "128x128"}))
    report(progress={"percent": 100})

    report(result={"key": key, "size": "128x128"})
    print(f"thumb {entry_id}: stored {key}", flush=True)
    return 0  # acknowledges the entry


if __name__ == "__main__":
    sys.exit(main())
