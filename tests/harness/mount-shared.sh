#!/usr/bin/env bash
# [ddmq test harness] Copied from the tested recipe shared/recipes/mount-shared.sh
# (kept essentially unchanged).  The test-suite uses it to get two sshfs mounts
# of one directory ("two nodes on shared storage") for its cross-mount tests:
# it runs `mount-shared.sh STATE_DIR` and reads MNT_A / MNT_B from the
# shell-sourceable STATE_DIR/env; undo with umount-shared.sh.
# See tests/harness/README.md.
#
# mount-shared.sh - simulate "two cluster nodes on shared storage" on ONE Linux box.
#
# Starts a private sshd on 127.0.0.1:<free port> (own host key, own config,
# key-only auth, SFTP only), exports one directory and mounts it twice with
# sshfs (two independent sshfs processes = two independent SFTP sessions).
# The system sshd and its config are not touched.
#
# Prereqs (Debian 12, as root):  apt-get install -y openssh-server sshfs
#
# Usage:  mount-shared.sh [STATE_DIR]           (default $TMPDIR/ddmq-shared-mount, TMPDIR defaulting to /tmp)
# Env:
#   SSHFS_OPTS   extra sshfs -o options for both mounts, comma separated, e.g.
#                "dir_cache=no"  or  "dir_cache=no,entry_timeout=0,attr_timeout=0,negative_timeout=0"
#   SSHD_USE_PAM yes|no|auto (default auto: no, unless root's password is locked with '!')
#
# Layout under STATE_DIR:
#   export/  the "server side" directory      mnt-a/ mnt-b/  the two sshfs mounts
#   ssh/     keys, sshd_config, ssh_config, known_hosts, sshd.pid, sshd.log
#   env      shell-sourceable: PORT, EXPORT, MNT_A, MNT_B, SSHD_PID, SSHFS_OPTS, SSHFS_PIDS
# Undo with umount-shared.sh [STATE_DIR].
set -euo pipefail

STATE=${1:-${TMPDIR:-/tmp}/ddmq-shared-mount}
SSHFS_OPTS=${SSHFS_OPTS:-}
SSHD=/usr/sbin/sshd                 # sshd insists on an absolute path (re-exec)
SFTP_SERVER=internal-sftp

die() { echo "mount-shared: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (sshd on a private port + FUSE mounts)"
for c in "$SSHD" sshfs ssh ssh-keygen fusermount3 mountpoint; do
  command -v "$c" >/dev/null || die "missing $c (apt-get install -y openssh-server sshfs)"
done
[ -e /dev/fuse ] || die "/dev/fuse missing (modprobe fuse / container without fuse device)"

STATE=$(mkdir -p "$STATE" && cd "$STATE" && pwd -P)
EXPORT=$STATE/export MNT_A=$STATE/mnt-a MNT_B=$STATE/mnt-b K=$STATE/ssh
if [ -f "$STATE/env" ]; then
  # shellcheck disable=SC1091
  . "$STATE/env"
  if [ -n "${SSHD_PID:-}" ] && kill -0 "$SSHD_PID" 2>/dev/null; then
    die "already set up (sshd pid $SSHD_PID); run umount-shared.sh $STATE first"
  fi
fi
for m in "$MNT_A" "$MNT_B"; do
  mountpoint -q "$m" 2>/dev/null && die "$m is already a mount point; run umount-shared.sh first"
done
mkdir -p "$EXPORT" "$MNT_A" "$MNT_B" "$K"
chmod 700 "$K"

# --- keys ----------------------------------------------------------------
[ -f "$K/host_ed25519" ]   || ssh-keygen -q -t ed25519 -N '' -C shared-sshd-host -f "$K/host_ed25519"
[ -f "$K/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C shared-sshfs-client -f "$K/client_ed25519"
# key may only be used for SFTP, no pty/forwarding
echo "restrict $(cat "$K/client_ed25519.pub")" > "$K/authorized_keys"
chmod 600 "$K/authorized_keys"

# --- sshd config -----------------------------------------------------------
if [ "${SSHD_USE_PAM:-auto}" = auto ]; then
  # Without PAM, OpenSSH refuses even pubkey logins for accounts whose hash starts with '!'
  case "$(getent shadow root | cut -d: -f2)" in '!'*) SSHD_USE_PAM=yes ;; *) SSHD_USE_PAM=no ;; esac
fi
mkdir -p -m 0755 /run/sshd          # Debian's privilege-separation dir (normally made by systemd)

write_sshd_config() {
  cat > "$K/sshd_config" <<EOF
# private sshd for shared-fs tests; started by $0
Port $1
ListenAddress 127.0.0.1
HostKey $K/host_ed25519
PidFile $K/sshd.pid
AuthorizedKeysFile $K/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM $SSHD_USE_PAM
# $STATE lives under world-writable /tmp, which StrictModes would reject
StrictModes no
Subsystem sftp $SFTP_SERVER
ForceCommand $SFTP_SERVER
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
MaxStartups 100:30:200
MaxSessions 50
LogLevel INFO
EOF
}

port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

rm -f "$K/sshd.pid"
started=
for _ in $(seq 1 20); do
  PORT=$(( 20000 + RANDOM % 40000 ))
  port_in_use "$PORT" && continue
  write_sshd_config "$PORT"
  "$SSHD" -t -f "$K/sshd_config" || die "sshd -t rejected $K/sshd_config"
  # sshd binds before it daemonizes: a non-zero exit here means "port taken" (race) or config error
  if "$SSHD" -f "$K/sshd_config" -E "$K/sshd.log"; then started=1; break; fi
done
[ -n "$started" ] || die "could not start sshd (see $K/sshd.log)"
for _ in $(seq 1 50); do [ -s "$K/sshd.pid" ] && break; sleep 0.1; done
SSHD_PID=$(cat "$K/sshd.pid")

# --- client side -------------------------------------------------------------
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$K/host_ed25519.pub")" > "$K/known_hosts"
cat > "$K/ssh_config" <<EOF
Host shared-storage
  HostName 127.0.0.1
  Port $PORT
  User root
  IdentityFile $K/client_ed25519
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile $K/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  PasswordAuthentication no
  ServerAliveInterval 15
  ServerAliveCountMax 3
  ConnectTimeout 10
  LogLevel ERROR
EOF

cat > "$STATE/env" <<EOF
STATE=$STATE
EXPORT=$EXPORT
MNT_A=$MNT_A
MNT_B=$MNT_B
PORT=$PORT
SSHD_PID=$SSHD_PID
SSHD_CONFIG=$K/sshd_config
SSHFS_OPTS='$SSHFS_OPTS'
EOF

# --- two mounts ------------------------------------------------------------
# -F makes ssh ignore ~/.ssh/config and /etc/ssh/ssh_config entirely.
base_opts="reconnect,idmap=none"
[ -n "$SSHFS_OPTS" ] && base_opts="$base_opts,$SSHFS_OPTS"
t0=$(date +%s.%N)
for m in "$MNT_A" "$MNT_B"; do
  if ! sshfs -F "$K/ssh_config" "shared-storage:$EXPORT" "$m" -o "$base_opts"; then
    echo "mount-shared: sshfs failed for $m; sshd log:" >&2; tail -n 20 "$K/sshd.log" >&2
    exit 1
  fi
done
t1=$(date +%s.%N)

# sshfs daemonizes, so $! is useless: find each daemon by its exact argv and record the PIDs
sshfs_pid_for() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = sshfs ] || continue
    tr '\0' '\n' < "$p/cmdline" 2>/dev/null | grep -qxF -- "$1" || continue
    tr '\0' '\n' < "$p/cmdline" 2>/dev/null | grep -qxF -- "$K/ssh_config" || continue
    echo "${p#/proc/}"
  done
}
SSHFS_PIDS="$(sshfs_pid_for "$MNT_A" | tr '\n' ' ')$(sshfs_pid_for "$MNT_B" | tr '\n' ' ')"
echo "SSHFS_PIDS='$SSHFS_PIDS'" >> "$STATE/env"

# sanity: a file created through A must be readable through B (bypass caches with a fresh name)
probe=".mount-probe.$$"
echo ok > "$MNT_A/$probe"
[ "$(cat "$MNT_B/$probe")" = ok ] || die "mounts do not share storage?"
rm -f "$MNT_A/$probe"

printf 'mount-shared: sshd pid %s on 127.0.0.1:%s, export %s, sshfs pids %s\n' "$SSHD_PID" "$PORT" "$EXPORT" "$SSHFS_PIDS"
printf 'mount-shared: node A = %s\nmount-shared: node B = %s\n' "$MNT_A" "$MNT_B"
printf 'mount-shared: sshfs options: %s (both mounts took %ss)\n' "$base_opts" "$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")"
