#!/usr/bin/env bash
# Fallback for machines without ../shared/tools: one directory mounted twice over loopback sshfs
# (two "hosts" whose locks do not see each other) and a throwaway PostgreSQL on loopback.
#   services.sh up SHARE MNT_A MNT_B PGDIR    # prints the PostgreSQL URL
#   services.sh down SHARE MNT_A MNT_B PGDIR
set -euo pipefail
cmd=$1 share=$2 a=$3 b=$4 pgdir=$5
state=/tmp/memq-ci-sshd port=2222 pgport=55432
export DEBIAN_FRONTEND=noninteractive
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
as_pg() { su postgres -s /bin/sh -c "$*"; }

if [ "$cmd" = up ]; then
  if ! command -v sshfs >/dev/null || [ ! -x /usr/sbin/sshd ] || [ -z "$(pgbin)" ]; then
    (apt-get install -y -q openssh-server sshfs postgresql || { apt-get update -q && apt-get install -y -q openssh-server sshfs postgresql; }) >/dev/null 2>&1
  fi
  mkdir -p "$state" "$share" "$a" "$b" /run/sshd /root/.ssh
  [ -f "$state/key" ] || ssh-keygen -q -t ed25519 -N '' -f "$state/key"
  [ -f "$state/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$state/hostkey"
  grep -qF "$(cat "$state/key.pub")" /root/.ssh/authorized_keys 2>/dev/null || cat "$state/key.pub" >> /root/.ssh/authorized_keys
  chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys
  printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s/hostkey\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nSubsystem sftp internal-sftp\nPidFile %s/sshd.pid\nUsePAM no\n' \
    "$port" "$state" "$state" > "$state/sshd_config"
  [ -f "$state/sshd.pid" ] && kill -0 "$(cat "$state/sshd.pid")" 2>/dev/null || /usr/sbin/sshd -f "$state/sshd_config"
  sleep 1
  for m in "$a" "$b"; do
    grep -q " $m fuse.sshfs" /proc/mounts || sshfs -p "$port" -o IdentityFile="$state/key",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
      -o cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0 "root@127.0.0.1:$share" "$m"
  done
  mkdir -p "$pgdir"; chown postgres "$pgdir"
  [ -f "$pgdir/PG_VERSION" ] || as_pg "$(pgbin)/initdb -D '$pgdir' -A trust -U postgres >/dev/null"
  as_pg "$(pgbin)/pg_ctl -D '$pgdir' status >/dev/null 2>&1" || \
    as_pg "$(pgbin)/pg_ctl -D '$pgdir' -l '$pgdir/server.log' -w -o \"-h 127.0.0.1 -p $pgport -k '$pgdir'\" start >/dev/null"
  echo "postgresql+psycopg://postgres@127.0.0.1:$pgport/postgres"
else
  for m in "$a" "$b"; do fusermount -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || true; done
  [ -f "$state/sshd.pid" ] && kill "$(cat "$state/sshd.pid")" 2>/dev/null || true
  [ -n "$(pgbin)" ] && as_pg "$(pgbin)/pg_ctl -D '$pgdir' -m fast stop >/dev/null 2>&1" || true
fi
