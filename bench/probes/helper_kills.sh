#!/usr/bin/env bash
# A probe from the adversarial review (issue "Security and faults, round 2"): HSET
# every ms on 5 fields while the helper is SIGKILLed 10 times; counts workers,
# orphans and zombies, and what outlives kill -9 of the server.
# Usage: bench/probes/helper_kills.sh MODULE.so PORT
set -u
mod=$1; port=$2; dir=$(mktemp -d /tmp/hk.XXXX); tag=hk$port
cat > $dir/c.toml <<T
[handler.w]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done", "$tag", "{field}", "{value}"]
[[watch]]
pattern = "hk:*"
handler = "w"
T
redis-server --port $port --dir $dir --save "" --daemonize yes --logfile $dir/log --loadmodule $mod config $dir/c.toml
sleep 0.5
c="redis-cli -p $port"
rpid=$($c INFO server | grep ^process_id | cut -d: -f2 | tr -d '\r')
( i=0; while [ -f $dir/writing ]; do $c HSET hk:k f$((i%5)) $i >/dev/null; i=$((i+1)); sleep 0.001; done ) &
touch $dir/writing
for n in $(seq 10); do
  h=""; until [ -n "$h" ]; do h=$(ps -eo pid,ppid,args | awk -v p=$rpid '$2==p && $3=="streamwatch-helper"{print $1}'); sleep 0.01; done
  kill -9 $h; sleep 0.1
done
rm -f $dir/writing; wait
for f in 0 1 2 3 4; do $c HSET hk:k f$f last >/dev/null; done
sleep 3
workers=$(ps -eo pid,ppid,stat,args | grep -c "[s]h -c trap.*$tag")
orphans=$(ps -eo pid,ppid,stat,args | awk -v t=$tag '$2==1 && $0 ~ t && $3 !~ /Z/' | wc -l)
zombies=$(ps -eo ppid,stat | awk -v p=$rpid '$1==p && $2 ~ /Z/' | wc -l)
echo "after 10 helper kills: $workers worker shells (5 expected), $orphans with parent pid 1, $zombies zombies under redis-server"
kill -9 $rpid; sleep 1
echo "1 s after kill -9 of redis-server: $(ps -eo args | grep -c "[s]h -c trap.*$tag") workers alive"
pkill -9 -f "$tag" 2>/dev/null; rm -rf $dir
