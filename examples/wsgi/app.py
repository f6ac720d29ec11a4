#!/usr/bin/env python3
"""A plain WSGI web app (standard library + redis-py) on a streamwatch queue.

    POST /jobs                    the form or JSON body's fields become a stream entry
                                  (XADD); 202 {"id": ...}
    GET  /jobs/<id>               the job's status (STREAMWATCH.JOB); 404 if no such entry
    GET  /jobs/<id>/wait?timeout=MS
                                  waits up to MS (default 30000) for its outcome
                                  (STREAMWATCH.WAIT); 200 once it has one, else 202 and
                                  the status so far

Nothing here runs a job: the server does (examples/wsgi/streamwatch.toml runs job.py
for every entry of the stream). Settings come from the environment: REDIS_URL
(default redis://127.0.0.1:6379/0) and JOBS_STREAM (default thumbs).

    python3 app.py --port 8000                 # wsgiref, a thread per request
    gunicorn --threads 8 app:app               # or any WSGI server: `app` is the app

A request in /wait holds its thread (and one Redis connection) until the job finishes
or the timeout: serve with threads (or gevent), not one synchronous worker.

The same three routes in Flask, for comparison (job_json and FINISHED are below):

    from flask import Flask, request
    app = Flask(__name__)

    @app.post("/jobs")
    def enqueue():
        fields = request.get_json(silent=True) or request.form.to_dict()
        return {"id": r.xadd(STREAM, fields)}, 202

    @app.get("/jobs/<id>")
    def status(id):
        job = job_json(r.execute_command("STREAMWATCH.JOB", STREAM, id))
        return (job, 200) if job else ({"error": "no such job"}, 404)

    @app.get("/jobs/<id>/wait")
    def wait(id):
        ms = request.args.get("timeout", 30000, type=int)
        job = job_json(r.execute_command("STREAMWATCH.WAIT", STREAM, id, "TIMEOUT", ms))
        if job is None:  # timed out: where is it?
            job = job_json(r.execute_command("STREAMWATCH.JOB", STREAM, id))
        if job is None:
            return {"error": "no such job"}, 404
        return job, 200 if job["state"] in FINISHED else 202
"""

import argparse
import json
import os
import re
import socketserver
import sys
import urllib.parse
from wsgiref.simple_server import WSGIServer, make_server

import redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
STREAM = os.environ.get("JOBS_STREAM", "thumbs")

# One client for the whole app: redis-py's connection pool is thread-safe, and each
# request (thread) takes a connection of its own. A `socket_timeout` in REDIS_URL
# must exceed the longest wait (MAX_WAIT_MS), or it cuts a WAIT short.
r = redis.Redis.from_url(REDIS_URL, decode_responses=True, encoding_errors="replace")

FINISHED = {"acked", "dead", "cancelled"}  # the states of a job with an outcome
JSON_FIELDS = ("result", "progress")  # JSON texts in the reply: decoded for the client
DEFAULT_WAIT_MS = 30000
MAX_WAIT_MS = 600000
MAX_BODY = 1 << 20
ENTRY_ID = re.compile(r"\d+-\d+")


def plain(v):
    """A reply value as something json.dumps takes."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return {str(plain(k)): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [plain(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def job_json(reply):
    """STREAMWATCH.JOB / WAIT's reply as a dict for JSON, None for nil.

    The reply is a map: a dict when the client speaks RESP3 (redis-py with protocol=3,
    e.g. `?protocol=3` in the URL), a flat [key, value, key, value, ...] list with RESP2
    (redis-py's default).
    """
    if reply is None:
        return None
    if not isinstance(reply, dict):
        reply = dict(zip(reply[0::2], reply[1::2]))
    job = {}
    for k, v in reply.items():
        k, v = plain(k), plain(v)
        if k in JSON_FIELDS and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass  # not JSON after all: the text as it is
        job[k] = v
    return job


class HTTPError(Exception):
    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


def read_fields(environ):
    """The POST body's fields: a JSON object or a urlencoded form."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError("400 Bad Request", "bad Content-Length")
    if length > MAX_BODY:
        raise HTTPError("413 Payload Too Large", f"body larger than {MAX_BODY} bytes")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    if not body.strip():
        raise HTTPError("400 Bad Request", "no fields: send e.g. url=https://...")
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            obj = json.loads(body)
        except ValueError as e:
            raise HTTPError("400 Bad Request", f"body is not JSON: {e}")
        if not isinstance(obj, dict):
            raise HTTPError("400 Bad Request", "body must be a JSON object")
        # A stream entry's values are strings: other JSON values go as JSON text.
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    elif ctype in ("application/x-www-form-urlencoded", ""):
        text = body.decode("utf-8", "replace")
        fields = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    else:
        raise HTTPError("415 Unsupported Media Type", f"cannot read a {ctype} body")
    if not fields:
        raise HTTPError("400 Bad Request", "no fields: send e.g. url=https://...")
    return fields


def enqueue(environ):
    entry_id = r.xadd(STREAM, read_fields(environ))
    body = {"id": entry_id, "status": f"/jobs/{entry_id}", "wait": f"/jobs/{entry_id}/wait"}
    return "202 Accepted", body, [("Location", f"/jobs/{entry_id}")]


def status(entry_id):
    job = job_json(r.execute_command("STREAMWATCH.JOB", STREAM, entry_id))
    if job is None:
        raise HTTPError("404 Not Found", "no such job")
    return "200 OK", job, []


def wait(entry_id, environ):
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    text = query.get("timeout", [str(DEFAULT_WAIT_MS)])[0]
    try:
        ms = int(text)
    except ValueError:
        ms = 0
    if not 1 <= ms <= MAX_WAIT_MS:
        raise HTTPError("400 Bad Request", f"timeout must be 1 to {MAX_WAIT_MS} ms")
    # Blocks this request's connection (not the server) until the job has an outcome.
    job = job_json(r.execute_command("STREAMWATCH.WAIT", STREAM, entry_id, "TIMEOUT", ms))
    if job is None:  # timed out (or no such job): where is it now?
        _, job, _ = status(entry_id)  # 404 if no such job
    # 202: not finished yet (it may have finished between the WAIT and the JOB: 200).
    return ("200 OK" if job.get("state") in FINISHED else "202 Accepted"), job, []


def route(environ):
    method = environ["REQUEST_METHOD"]
    parts = environ.get("PATH_INFO", "/").strip("/").split("/")
    if parts == [""]:
        if method != "GET":
            raise HTTPError("405 Method Not Allowed", "GET only", [("Allow", "GET")])
        routes = ["POST /jobs", "GET /jobs/<id>", "GET /jobs/<id>/wait?timeout=ms"]
        return "200 OK", {"stream": STREAM, "routes": routes}, []
    if parts[0] != "jobs" or len(parts) > 3:
        raise HTTPError("404 Not Found", "no such page")
    if len(parts) == 1:
        if method != "POST":
            raise HTTPError("405 Method Not Allowed", "POST only", [("Allow", "POST")])
        return enqueue(environ)
    entry_id = parts[1]
    if len(parts) == 3 and parts[2] != "wait":
        raise HTTPError("404 Not Found", "no such page")
    if method != "GET":
        raise HTTPError("405 Method Not Allowed", "GET only", [("Allow", "GET")])
    if not ENTRY_ID.fullmatch(entry_id):
        raise HTTPError("404 Not Found", "no such job")
    return wait(entry_id, environ) if len(parts) == 3 else status(entry_id)


def app(environ, start_response):
    """The WSGI application."""
    try:
        code, body, headers = route(environ)
    except HTTPError as e:
        code, body, headers = e.status, {"error": str(e)}, e.headers
    except redis.RedisError as e:  # the server refused, or is unreachable
        code, body, headers = "502 Bad Gateway", {"error": f"redis: {e}"}, []
    data = (json.dumps(body) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))] + headers
    start_response(code, headers)
    return [data]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server with a thread per request: a /wait blocks only its own."""

    daemon_threads = True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    with make_server(args.host, args.port, app, server_class=ThreadingWSGIServer) as httpd:
        print(
            f"http://{args.host}:{httpd.server_port}/ : jobs on stream {STREAM!r} of {REDIS_URL}",
            file=sys.stderr,
            flush=True,
        )
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
