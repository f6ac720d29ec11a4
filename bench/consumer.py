"""The stream peer: a redis-py consumer-group worker, as a web app would run one.

THREADS threads each loop XREADGROUP (COUNT 1, BLOCK) -> subprocess.run(HANDLER) ->
XACK, until N entries are acknowledged; prints the elapsed seconds. Run by the
benchmark: python3 consumer.py PORT KEY N THREADS HANDLER
"""

import subprocess
import sys
import threading
import time

import redis

port, key, n, threads, handler = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
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
            for entry_id, _fields in entries:
                if subprocess.run([handler]).returncode == 0:
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
