#!/bin/sh
# The demo stream job of `make run`: one entry of the stream `thumbnails`. The entry
# arrives as JSON on stdin; its id and its `url` field as arguments ($1, $2). An URL
# containing "fail" fails, so it is retried and then dead-lettered.
entry=$(cat)
echo "job $1: thumbnail of $2 (entry $entry)"
case "$2" in
*fail*)
    echo "job $1: cannot fetch $2" >&2
    exit 1
    ;;
esac
sleep 0.2
echo "job $1: done"
