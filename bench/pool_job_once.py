"""The benchmark's Python job run the classic way, a process per entry (no pool): the
entry is one JSON object on stdin (`{"n":"1"}`), the work is that of bench/pool_job.py
(sum(range(1000))), exit 0 acknowledges. It exists to compare against the pool worker.
"""

import json
import sys

n = json.load(sys.stdin)["n"]
sum(range(1000))
