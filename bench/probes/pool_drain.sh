#!/usr/bin/env bash
# Drains N entries (default 100,000) through a pool of 8 compiled workers
# (examples/pool_worker, answers at once) and prints entries/s, from the WATCH to an
# empty PEL; with `perf` as 3rd argument, records 2 s of `perf record -a -g` into
# perf.data in the temporary directory. Used to compare two builds back to back (see
# docs/performance.md, worker pools).
# Usage: bench/probes/pool_drain.sh MODULE.so PORT [N] [perf]
# (after `cargo build --release --examples`)
set -u
mod=$(realpath "$1"); port=$2; n=${3:-100000}; dir=$(mktemp -d /tmp/drain.XXXX)
root=$(cd "$(dirname "$0")/../.." && pwd)
cat > $dir/c.toml <<T
[handler.rspool]
command = ["$root/target/release/examples/pool_worker"]
pool = 8
T
cli() { redis-cli -p $port "$@"; }
redis-server --port $port --save '' --appendonly no --daemonize yes --dir $dir \
  --logfile $dir/redis.log --loadmodule $mod config $dir/c.toml >/dev/null
for _ in $(seq 100); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
cli ping >/dev/null 2>&1 || { echo "server did not start: $dir/redis.log"; exit 1; }
# Warm the pool: all 8 workers started.
[ -n "${OUTCOMES_MAX:-}" ] && cli CONFIG SET streamwatch.outcomes-max "$OUTCOMES_MAX" >/dev/null
cli STREAMWATCH.WATCH warm HANDLER rspool TYPE stream CONCURRENCY 8 >/dev/null
for i in $(seq 1 200); do echo "XADD warm * a $i"; done | cli >/dev/null
sleep 1
python3 - "$n" <<'PY' | cli --pipe >/dev/null
import sys
out = sys.stdout
for i in range(int(sys.argv[1])):
    v = str(i)
    out.write("*5\r\n$4\r\nXADD\r\n$1\r\nq\r\n$1\r\n*\r\n$1\r\nn\r\n$%d\r\n%s\r\n" % (len(v), v))
PY
field() { cli XINFO GROUPS q | awk -v f="$1" 'g{print;exit} $0==f{g=1}'; }
start=$(date +%s.%N)
cli STREAMWATCH.WATCH q HANDLER rspool TYPE stream CONCURRENCY 8 >/dev/null
[ "${4:-}" = perf ] && { perf record -F 2000 -a -g -o $dir/perf.data -- sleep 2 >/dev/null 2>&1 & }
until [ "$(field pending)" = 0 ] && [ "$(field lag)" = 0 ]; do sleep 0.05; done
end=$(date +%s.%N)
python3 -c "print('entries/s', round($n / ($end - $start)))"
wait
cli shutdown nosave >/dev/null 2>&1
echo "dir: $dir"
