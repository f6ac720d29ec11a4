#!/bin/sh
# A stand-in for a transcoder: one process per stream. Prints its URL, then a
# heartbeat every second, and exits cleanly on TERM (what streamwatch sends to stop it).
id="$1"
url="$2"
echo "worker $id: transcoding $url (pid $$)"
trap 'echo "worker $id: got TERM, stopping cleanly"; exit 0' TERM INT
n=0
while :; do
  n=$((n + 1))
  echo "worker $id: heartbeat $n from $url"
  sleep 1 &
  wait $!
done
