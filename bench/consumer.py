"""The stream peer: a redis-py consumer-group worker, as a web app would run one.

THREADS threads each loop XREADGROUP (COUNT 1, BLOCK) -> subprocess.run(HANDLER) ->
XACK, until N entries are acknowledged; prints the elapsed seconds. Run by the
benchmark: python3 consumer.py PORT KEY N THREADS HANDLER

HANDLER `--inline-sum` runs no process: each thread does the pool benchmark's work
(bench/pool_job.py: read the field n, sum(range(1000))) in-process instead, as a
redis-py worker that needs no subprocess would.
"""

import subprocess
import sys
import threading
import time

import redis

port, key, n, threads, handler = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
inline = handler == "--inline-sum"
r = redis.Redis(port=int(port))
try:
    r.xgroup_create(key, "peer", id="0")
except redis.ResponseError:
    pass

done = 0
lock = threading.Lock()


def work(name):
    global done
    c = redis.Redis(port=int(port))
    while True:
        with lock:
            if done >= n:
                return
        got = c.xreadgroup("peer", name, {key: ">"}, count=1, block=100)
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                if inline:
                    _n = fields[b"n"]
                    sum(range(1000))
                    ok = True
                else:
                    ok = subprocess.run([handler]).returncode == 0
                if ok:
                    c.xack(key, "peer", entry_id)
                    with lock:
                        done += 1


start = time.monotonic()
ts = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(time.monotonic() - start)
