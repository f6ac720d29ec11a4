"""The benchmark's Python job as a pool worker (clients/python/streamwatch.py): the same
work as bench/pool_job_once.py, run in one long-lived process per pool slot, so that the
two side by side show what a pool saves over a process per entry. Per entry: read the
fields (already parsed by the client), sum(range(1000)), answer ok.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))

from streamwatch import jobs  # noqa: E402

for job in jobs():
    with job:
        n = job.fields["n"]
        sum(range(1000))
        job.ok()
