#!/bin/sh
# System calls per spawn on the server side: `strace -c` attached to the launched server of
# `compare --profile-loop`, after its warm-up, over N spawns.
#
#   benches/scripts/syscalls.sh COMPARE N MODE [-f]
#
# COMPARE: the compare binary (target/release/compare); MODE: entry (noop, 3 fds, fork),
# entry-pooled (FORKSERVER_PREFORK=4), exec (/bin/true, the CLONE_VM path), exec-fork
# (FORKSERVER_EXEC_FORK=1), exec-pooled. With -f, the children are traced too (for exec jobs
# that includes what /bin/true itself does). Prints strace's table; divide by N.
set -eu
compare=$1 n=$2 mode=$3 follow=${4:-}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/go"
flags="" env=""
case $mode in
entry) ;;
entry-pooled) env="FORKSERVER_PREFORK=4" ;;
exec) flags="--exec" ;;
exec-fork) flags="--exec" env="FORKSERVER_EXEC_FORK=1" ;;
exec-pooled) flags="--exec" env="FORKSERVER_PREFORK=4" ;;
*) echo "unknown mode $mode" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086
env $env "$compare" --profile-loop "$n" $flags --wait-stdin <"$dir/go" 2>"$dir/err" &
exec 3>"$dir/go"
while ! grep -q "waiting for a line" "$dir/err" 2>/dev/null; do sleep 0.1; done
pid=$(sed -n 's/^server pid //p' "$dir/err")
# shellcheck disable=SC2086
strace -c $follow -o "$dir/trace" -p "$pid" 2>/dev/null &
strace=$!
sleep 1 # strace attaching: nothing to wait on but its own output
echo go >&3
exec 3>&-
wait %1
wait "$strace" || true
grep spawns "$dir/err" >&2
cat "$dir/trace"
