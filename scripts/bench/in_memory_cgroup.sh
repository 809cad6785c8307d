#!/usr/bin/env bash
# Run a command inside a cgroup-v1 memory cgroup, to emulate a machine with less RAM.
#
#   scripts/bench/in_memory_cgroup.sh LIMIT NAME -- COMMAND [ARGS...]
#
# LIMIT is anything memory.limit_in_bytes takes (10G, 10240M). The page cache the command
# causes is charged to the cgroup too (that is the point), so the script drops the page cache
# first: pages cached earlier by other cgroups would otherwise be free hits. Needs root and the
# v1 memory controller at /sys/fs/cgroup/memory. After the command it prints the cgroup's
# peak usage (process memory + page cache), how often the limit was hit, and whether the OOM
# killer ran; it exits with the command's status.
set -euo pipefail
if [[ $# -lt 4 || "$3" != "--" ]]; then
    sed -n '2,/^set -e/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
LIMIT="$1"; NAME="$2"; shift 3
CG="/sys/fs/cgroup/memory/$NAME"
mkdir -p "$CG"
echo 0 > "$CG/memory.swappiness" 2>/dev/null || true
echo "$LIMIT" > "$CG/memory.limit_in_bytes"
echo 0 > "$CG/memory.max_usage_in_bytes" 2>/dev/null || true
echo 0 > "$CG/memory.failcnt" 2>/dev/null || true
sync; echo 3 > /proc/sys/vm/drop_caches
oom_before="$(awk '/oom_kill / {print $2}' "$CG/memory.oom_control")"
echo "cgroup:  $NAME, memory.limit_in_bytes = $(cat "$CG/memory.limit_in_bytes") ($LIMIT), page cache dropped" >&2
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at $(date -u +%T) UTC" >&2
set +e
bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$CG" "$@"
rc=$?
set -e
oom_after="$(awk '/oom_kill / {print $2}' "$CG/memory.oom_control")"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at $(date -u +%T) UTC" >&2
echo "cgroup peak usage (RSS + page cache): $(( $(cat "$CG/memory.max_usage_in_bytes") / 1048576 )) MiB of $(( $(cat "$CG/memory.limit_in_bytes") / 1048576 )) MiB; limit hit $(cat "$CG/memory.failcnt") times; OOM kills during the run: $(( oom_after - oom_before )); exit status $rc" >&2
exit $rc
