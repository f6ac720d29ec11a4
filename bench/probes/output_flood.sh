#!/usr/bin/env bash
# A probe from the adversarial review (issue "Security and faults, round 2"): a worker
# writing without pause (`yes`) next to 100,000 keys under maxmemory 200mb allkeys-lru.
# Prints used_memory over 12 s, HSET -> worker latency, JOBS latency, evicted keys.
# Usage: bench/probes/output_flood.sh MODULE.so PORT
set -u
mod=$1; port=$2; dir=$(mktemp -d /tmp/flood.XXXX)
cat > $dir/c.toml <<'T'
[handler.flood]
command = ["/bin/sh", "-c", "exec yes $0", "{value}"]
[handler.w]
command = ["/bin/sleep", "1000"]
[[watch]]
pattern = "fine:*"
handler = "w"
T
redis-server --port $port --dir $dir --save "" --daemonize yes --logfile $dir/log \
  --enable-debug-command yes --maxmemory 200mb --maxmemory-policy allkeys-lru --loadmodule $mod config $dir/c.toml
sleep 0.5
c="redis-cli -p $port"
$c DEBUG POPULATE 100000 user 1000 >/dev/null
$c STREAMWATCH.WATCH 'flood:*' HANDLER flood >/dev/null
mem() { $c INFO memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r'; }
echo "before: used_memory $(mem), dbsize $($c DBSIZE)"
$c HSET flood:k a y >/dev/null
for t in 3 6 9 12; do sleep 3; echo "after ${t}s: used_memory $(mem)"; done
s=$(date +%s%N); $c HSET fine:k f v >/dev/null
for i in $(seq 30000); do $c STREAMWATCH.JOB fine:k f | grep -q running && break; sleep 0.001; done
e=$(date +%s%N); echo "HSET -> worker running: $(( (e-s)/1000000 )) ms"
s=$(date +%s%N); $c STREAMWATCH.JOBS >/dev/null; e=$(date +%s%N); echo "JOBS: $(( (e-s)/1000000 )) ms"
echo "evicted_keys: $($c INFO stats | grep '^evicted_keys:' | cut -d: -f2 | tr -d '\r'), dbsize $($c DBSIZE), watches store exists: $($c EXISTS streamwatch:watches)"
echo "output_dropped: $($c INFO streamwatch | grep output_dropped | cut -d: -f2 | tr -d '\r')"
top -b -n1 | grep -E "yes|streamwatch|redis-server" | head -5 | awk '{print "cpu%", $9, $12}'
$c HDEL flood:k a >/dev/null; sleep 2; echo "after HDEL +2s: used_memory $(mem)"
$c SHUTDOWN NOSAVE >/dev/null 2>&1; sleep 0.5; pkill -9 -f "yes y" 2>/dev/null; rm -rf $dir
