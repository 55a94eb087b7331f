#!/usr/bin/env bash
# [ddmq test harness] Copied from the tested recipe shared/recipes/umount-shared.sh
# (kept essentially unchanged).  The test-suite runs it (usually as
# `PURGE=1 umount-shared.sh STATE_DIR`) after the cross-mount tests.
# See tests/harness/README.md.
#
# umount-shared.sh - undo mount-shared.sh: unmount both sshfs mounts, stop ONLY the
# private sshd recorded in STATE_DIR/ssh/sshd.pid (and its own session children).
# Usage: umount-shared.sh [STATE_DIR]   (default $TMPDIR/ddmq-shared-mount, TMPDIR defaulting to /tmp)
#        PURGE=1 umount-shared.sh ...   also delete STATE_DIR (export data + keys)
set -uo pipefail

STATE=${1:-${TMPDIR:-/tmp}/ddmq-shared-mount}
[ -d "$STATE" ] || { echo "umount-shared: no $STATE" >&2; exit 0; }
STATE=$(cd "$STATE" && pwd -P)
K=$STATE/ssh
rc=0

for m in "$STATE/mnt-a" "$STATE/mnt-b"; do
  mountpoint -q "$m" 2>/dev/null || continue
  if ! fusermount3 -u "$m" 2>/dev/null; then
    # busy (a process has cwd/open files inside) or sshfs already dead: lazy detach
    echo "umount-shared: $m busy or stale, lazy unmount" >&2
    fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" || rc=1
  fi
done

# sshfs normally exits once its mount is gone; if one lingers, stop it (by recorded PID, argv-checked)
SSHFS_PIDS=$(sed -n "s/^SSHFS_PIDS='\(.*\)'$/\1/p" "$STATE/env" 2>/dev/null)
for p in $SSHFS_PIDS; do
  for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null && tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | grep -qxF -- "$K/ssh_config"; then
    echo "umount-shared: sshfs $p still running after unmount, sending SIGTERM" >&2
    kill "$p"
  fi
done

pid=$(cat "$K/sshd.pid" 2>/dev/null || true)
if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
   tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$K/sshd_config"; then
  # children of our listener = per-connection sshd processes of our own sessions
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  kill "$pid" 2>/dev/null
  for k in $kids; do kill "$k" 2>/dev/null; done
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then echo "umount-shared: sshd $pid still alive" >&2; rc=1; fi
  echo "umount-shared: stopped sshd $pid"
elif [ -n "$pid" ]; then
  echo "umount-shared: pid $pid is not our sshd (stale pid file), not killing" >&2
fi
rm -f "$K/sshd.pid" "$STATE/env"

if [ "${PURGE:-0}" = 1 ] && [ $rc = 0 ]; then
  if mountpoint -q "$STATE/mnt-a" || mountpoint -q "$STATE/mnt-b"; then
    echo "umount-shared: still mounted, not purging" >&2; rc=1
  else
    rm -rf --one-file-system "$STATE"
  fi
fi
exit $rc
