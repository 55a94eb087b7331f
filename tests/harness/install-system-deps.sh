#!/usr/bin/env bash
# install-system-deps.sh -- install the Debian packages the test harness needs:
#   start-slurm.sh / stop-slurm.sh    slurm-wlm (slurmctld, slurmd, slurm-client), munge,
#                                      slurmdbd + mariadb-server (SLURM_ACCOUNTING=slurmdbd: sacct)
#   mount-shared.sh / umount-shared.sh openssh-server, openssh-client, sshfs, fuse3
#   all of them                        iproute2 (ss), procps (ps), hostname, util-linux
#                                      (runuser, mountpoint)
#   tests/test_clock.py                faketime (libfaketime: a process with a shifted clock)
#   tests/test_multiuser.py            python3-yaml (the system python run as other users)
#   benchmarks/batch.py, barrier.py    xfsprogs (mkfs.xfs: the XFS image durable batches are measured on)
#
# Idempotent and non-interactive.  If every package is already installed
# (checked with dpkg-query) it does nothing -- no `apt-get update` -- so re-runs
# take a fraction of a second.  apt output goes to a log file
# ($DDMQ_APT_LOG, default ${TMPDIR:-/tmp}/ddmq-install-system-deps.log); on
# failure the tail of that log is printed and the script exits non-zero.
#
# Package maintainer scripts must not start the packaged services (a system
# sshd on :22, munged, slurmctld/slurmd on :6817/:6818 would collide with the
# harness's own daemons).  Where /usr/sbin/policy-rc.d does not exist, a
# temporary one that denies every start (exit 101) is put in place for the
# duration of the install and removed afterwards.
#
# Run as root (or with sudo).  Usage:  tests/harness/install-system-deps.sh
set -euo pipefail

PKGS=(slurm-wlm slurmdbd mariadb-server munge openssh-server openssh-client sshfs fuse3 iproute2 procps hostname util-linux faketime python3-yaml xfsprogs)
LOG=${DDMQ_APT_LOG:-${TMPDIR:-/tmp}/ddmq-install-system-deps.log}
export DEBIAN_FRONTEND=noninteractive

die() { echo "install-system-deps: ERROR: $*" >&2; exit 1; }

installed() {  # installed PKG -> 0 iff dpkg says "install ok installed"
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system-deps: all ${#PKGS[@]} packages already installed"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root to install: ${missing[*]}"
command -v apt-get >/dev/null || die "apt-get not found (Debian/Ubuntu only)"

POLICY=/usr/sbin/policy-rc.d
cleanup_policy=
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, from ddmq tests/harness/install-system-deps.sh\nexit 101\n' > "$POLICY"
    chmod 0755 "$POLICY"
    cleanup_policy=1
fi
cleanup() { if [ -n "$cleanup_policy" ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

run() {  # run CMD...: append output to $LOG, show its tail and fail on error
    echo "+ $*" >> "$LOG"
    if ! "$@" >> "$LOG" 2>&1; then
        echo "install-system-deps: FAILED: $*" >&2
        echo "----- last 40 lines of $LOG" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

: > "$LOG"
echo "install-system-deps: installing ${missing[*]} (log: $LOG)"
run apt-get -qq update
run apt-get -qq install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"

still=()
for p in "${PKGS[@]}"; do installed "$p" || still+=("$p"); done
[ ${#still[@]} -eq 0 ] || die "not installed after apt-get: ${still[*]} (see $LOG)"
echo "install-system-deps: done"
