"""Tests for streamwatch.py, run as the module runs a pool worker: a real worker script in
a subprocess, entries on its stdin, replies read from its fd 3 (a pipe), its stdout and
stderr apart. They exist so the client is checked without Redis or the module.

    python3 -m unittest discover -s clients/python
"""

import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def entry(num, **fields):
    return {"key": "q", "id": "%d-0" % num, "db": 0, "attempt": 1,
            "fields": fields or {"n": str(num)}}


class Worker:
    """A worker script in a subprocess: stdin, stdout, stderr pipes and fd 3 a pipe."""

    def __init__(self, body, fd3=True):
        self.dir = tempfile.TemporaryDirectory()
        script = os.path.join(self.dir.name, "worker.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(body))
        env = dict(os.environ, PYTHONPATH=HERE, PYTHONUNBUFFERED="")
        self.replies_r = None
        if fd3:
            r, w = os.pipe()
            # sh makes the pipe's write end fd 3 (3>&w), closes the original and execs.
            close = " %d>&-" % w if w != 3 else ""
            cmd = ["sh", "-c", 'exec "$0" "$@" 3>&%d%s' % (w, close), sys.executable, script]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, pass_fds=(w,), env=env)
            os.close(w)
            self.replies_r = r
        else:
            self.proc = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._buf = b""

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def reply(self, timeout=10):
        """The next line on fd 3, parsed (None at EOF); fails after timeout seconds."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.replies_r], [], [], timeout)
            if not ready:
                raise AssertionError("no reply on fd 3 within %s s" % timeout)
            chunk = os.read(self.replies_r, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self.last_raw = line
        return json.loads(line)

    def run(self, entries, timeout=20):
        """Feeds all entries, closes stdin; returns (replies, raw lines, stdout, stderr, rc)."""
        raw = []
        reader = None
        if self.replies_r is not None:
            def read_all():
                with os.fdopen(self.replies_r, "rb") as f:
                    raw.extend(f.read().splitlines())
            reader = threading.Thread(target=read_all)
            reader.start()
        data = "".join(json.dumps(e) + "\n" for e in entries).encode()
        out, err = self.proc.communicate(data, timeout=timeout)
        if reader:
            reader.join(timeout)
        self.dir.cleanup()
        return [json.loads(l) for l in raw], raw, out.decode(), err.decode(), self.proc.returncode

    def close(self):
        self.proc.stdin.close()
        rc = self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        os.close(self.replies_r)
        self.dir.cleanup()
        return rc


class StreamwatchTest(unittest.TestCase):
    def test_ok_with_and_without_result(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                with job:
                    if job.fields["n"] == "1":
                        job.ok()
                    else:
                        job.ok({"key": job.key, "id": job.id, "db": job.db,
                                "attempt": job.attempt, "fields": job.fields})
        """)
        e2 = dict(entry(2, url="https://example.com/a.jpg", n="2"), db=3, attempt=2)
        replies, raw, _, err, rc = w.run([entry(1), e2])
        self.assertEqual(rc, 0, err)
        self.assertEqual(raw[0], b'{"id":"1-0","ok":true}')  # compact, no result key
        self.assertEqual(replies[1], {"id": "2-0", "ok": True, "result": {
            "key": "q", "id": "2-0", "db": 3, "attempt": 2,
            "fields": {"url": "https://example.com/a.jpg", "n": "2"}}})
        self.assertEqual(list(replies[1]["result"]["fields"]), ["url", "n"])  # stream order

    def test_fail(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                with job:
                    job.fail("cannot fetch " + job.fields["n"])
        """)
        replies, _, _, err, rc = w.run([entry(1)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(replies, [{"id": "1-0", "ok": False, "error": "cannot fetch 1"}])

    def test_progress_then_answer(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                with job:
                    job.progress({"step": 1})
                    job.progress(0.5)
                    job.ok(7)
        """)
        replies, _, _, err, rc = w.run([entry(1)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(replies, [{"id": "1-0", "progress": {"step": 1}},
                                   {"id": "1-0", "progress": 0.5},
                                   {"id": "1-0", "ok": True, "result": 7}])

    def test_exception_fails_the_job_and_the_loop_goes_on(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                with job:
                    if job.fields["n"] == "1":
                        raise ValueError("boom")
                    if job.fields["n"] == "2":
                        job.ok({"bad": object()})  # not JSON: fails, nothing sent
                    job.ok()
            print("loop ended")
        """)
        replies, _, out, err, rc = w.run([entry(1), entry(2), entry(3)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(replies[0], {"id": "1-0", "ok": False, "error": "ValueError: boom"})
        self.assertEqual(replies[1]["ok"], False)
        self.assertTrue(replies[1]["error"].startswith("TypeError: "), replies[1])
        self.assertEqual(replies[2], {"id": "3-0", "ok": True})
        self.assertIn("Traceback", err)
        self.assertIn('raise ValueError("boom")', err)
        self.assertEqual(out, "loop ended\n")

    def test_exception_without_with_fails_the_job_and_ends_the_worker(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                job.fields["missing"]
        """)
        replies, _, _, err, rc = w.run([entry(1), entry(2)])
        self.assertNotEqual(rc, 0)
        self.assertEqual(replies, [{"id": "1-0", "ok": False, "error": "KeyError: 'missing'"}])
        self.assertIn("Traceback", err)

    def test_unanswered_job_fails_with_no_answer(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                if job.fields["n"] == "2":
                    job.ok()
                if job.fields["n"] == "3":
                    break  # left with job 3 unanswered: failed at exit
        """)
        replies, _, _, err, rc = w.run([entry(1), entry(2), entry(3)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(replies, [{"id": "1-0", "ok": False, "error": "no answer"},
                                   {"id": "2-0", "ok": True},
                                   {"id": "3-0", "ok": False, "error": "no answer"}])

    def test_second_answer_raises(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                with job:
                    job.ok()
                    job.fail("again")
        """)
        replies, _, _, err, rc = w.run([entry(1)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(replies, [{"id": "1-0", "ok": True}])
        self.assertIn("job 1-0 was already answered", err)

    def test_prints_do_not_disturb_fd3(self):
        w = Worker("""
            import sys
            from streamwatch import jobs
            print('{"id": "1-0", "ok": false}')
            for job in jobs():
                with job:
                    print("working on", job.id)
                    print("to stderr", file=sys.stderr)
                    job.ok()
        """)
        replies, _, out, err, rc = w.run([entry(1)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(replies, [{"id": "1-0", "ok": True}])
        self.assertEqual(out, '{"id": "1-0", "ok": false}\nworking on 1-0\n')
        self.assertEqual(err, "to stderr\n")

    def test_eof_ends_the_loop(self):
        body = """
            from streamwatch import jobs
            for job in jobs():
                job.ok()
            print("done")
        """
        for entries in ([], [entry(1)]):
            replies, _, out, err, rc = Worker(body).run(entries)
            self.assertEqual((rc, out), (0, "done\n"), err)
            self.assertEqual(len(replies), len(entries))

    def test_one_at_a_time(self):
        # Each reply arrives while stdin is still open: lines are flushed as written.
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                job.ok(job.fields)
        """)
        try:
            for n in range(1, 4):
                w.send(entry(n, text="é ✓ \ufffd"))
                self.assertEqual(w.reply(), {"id": "%d-0" % n, "ok": True,
                                             "result": {"text": "é ✓ \ufffd"}})
                self.assertIn("é ✓ \ufffd".encode(), w.last_raw)  # UTF-8, not \\u escapes
        finally:
            self.assertEqual(w.close(), 0)

    @unittest.skipUnless(os.path.isdir("/proc/self/fd"), "needs /proc")
    def test_programs_the_worker_runs_do_not_get_fd3(self):
        w = Worker("""
            import os
            from streamwatch import jobs
            for job in jobs():
                os.system('[ -e /proc/$$/fd/3 ] && echo leaked || echo clean')
                job.ok()
        """)
        _, _, out, err, rc = w.run([entry(1)])
        self.assertEqual((rc, out), (0, "clean\n"), err)

    def test_missing_fd3_is_a_clear_error(self):
        w = Worker("""
            from streamwatch import jobs
            for job in jobs():
                job.ok()
        """, fd3=False)
        _, _, _, err, rc = w.run([entry(1)])
        self.assertNotEqual(rc, 0)
        self.assertEqual(err.strip(), "streamwatch: fd 3 is not open: "
                                      "run this worker from a handler with pool = N")


if __name__ == "__main__":
    unittest.main()
