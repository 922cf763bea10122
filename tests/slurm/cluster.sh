#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, with accounting, for tests/slurm and the README's check.
#
#   bash tests/slurm/cluster.sh up     # install what is missing, start it, wait for the node to be idle
#   bash tests/slurm/cluster.sh down   # stop what `up` started and remove what it wrote
#
# Root (or password-less sudo) on Debian (apt), with or without systemd: every daemon is started by hand, and its pid recorded in
# the state folder ($SOAP_SLURM_STATE, default /tmp/soap-slurm), which holds everything else the cluster
# writes too (configs, MariaDB's files, spool, logs). Outside it, `up` writes only /etc/slurm/slurm.conf
# (where sbatch, sinfo and sacct look; a slurm.conf this script did not write is never touched) and, when
# missing, munge's key and run folder. `down` removes those again; the apt packages stay installed.
# Exit status 3: this machine cannot run the cluster (not root, no apt); the message says why.
set -euo pipefail

STATE=${SOAP_SLURM_STATE:-/tmp/soap-slurm}
DB_PORT=${SOAP_SLURM_DB_PORT:-13306}  # not 3306: a site's own MariaDB may hold that
CLUSTER=soap
PARTITION=main
CONF=/etc/slurm/slurm.conf
MARK="# written by soap's tests/slurm/cluster.sh: removed by its 'down'"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; down stops them in reverse

say() { echo "cluster.sh: $*" >&2; }
cannot() { say "cannot run a SLURM cluster here: $*"; exit 3; }

alive() {  # alive NAME: the daemon up started is still running
  local pid
  [ -s "$STATE/pids/$1" ] || return 1
  pid=$(cat "$STATE/pids/$1")
  kill -0 "$pid" 2>/dev/null && grep -qa "$1" "/proc/$pid/cmdline"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { say "timed out waiting for $what; logs in $STATE/log"; tail -n 20 "$STATE"/log/* >&2 || true; exit 1; }
    sleep 0.5
  done
}

start() {  # start NAME COMMAND...: run a daemon in the foreground of a background job, pid recorded
  local name=$1
  shift
  alive "$name" && return 0
  setsid "$@" >>"$STATE/log/$name.out" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
  say "started $name (pid $!)"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null || missing+=(slurm-wlm)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || cannot "${missing[*]} missing and no apt-get to install them"
  say "installing ${missing[*]}"
  # Packages must not start their daemons (a system MariaDB or munged would be left behind): an
  # invoke-rc.d policy that refuses, unless the machine already has one.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && own_policy=1
  fi
  local ok=1
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$STATE/log/apt.log" 2>&1 || ok=
  [ -n "$own_policy" ] && rm -f $policy
  [ -n "$ok" ] || { tail -n 20 "$STATE/log/apt.log" >&2; cannot "apt-get install ${missing[*]} failed"; }
}

node_line() {  # this machine as slurm.conf's NodeName line: slurmd -C measures its CPUs and memory
  local hw
  hw=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //')
  echo "NodeName=$(hostname -s) NodeAddr=127.0.0.1 $hw State=UNKNOWN"
}

write_configs() {
  mkdir -p "$STATE/etc" "$STATE/spool/ctld" "$STATE/spool/d"
  cat >"$STATE/etc/slurm.conf" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No systemd, so no cgroup plugins: processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Short waits: the fault tests cancel jobs. Finished jobs stay in squeue SLURM's default 300 s.
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
$(node_line)
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  umask 077
  cat >"$STATE/etc/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/etc/db.password")
StorageLoc=slurm_acct_db
EOF
  umask 022
  mkdir -p "$(dirname $CONF)"
  cp "$STATE/etc/slurm.conf" $CONF
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key && chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    touch "$STATE/created-munge-key"
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0  # a munged already runs (the system's, or ours): slurm only needs one
  fi
  [ -d /run/munge ] || { mkdir -p /run/munge && touch "$STATE/created-munge-run"; }
  chown munge: /run/munge
  install -o munge -m 644 /dev/null "$STATE/log/munged.log"
  start munged runuser -u munge -- /usr/sbin/munged --foreground --log-file="$STATE/log/munged.log"
  wait_for 30 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
  local db="$STATE/mysql" sock="$STATE/run/mysqld.sock"
  if [ ! -d "$db/mysql" ]; then
    mkdir -p "$db" && chown mysql: "$db"
    mariadb-install-db --no-defaults --user=mysql --datadir="$db" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
  fi
  chown mysql: "$STATE/run"
  start mariadbd mariadbd --no-defaults --user=mysql --datadir="$db" --socket="$sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadbd.pid" --log-error="$STATE/log/mariadbd.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
  wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$sock" ping
  local password
  password=$(cat "$STATE/etc/db.password")
  mariadb --no-defaults --socket="$sock" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

up() {
  [ "$(id -u)" = 0 ] || cannot "it needs root (apt, munge, daemons), and this is uid $(id -u)"
  if [ -e $CONF ] && ! grep -qxF "$MARK" $CONF; then
    cannot "$CONF exists and was not written by this script (a real cluster's?); not touching it"
  fi
  mkdir -p "$STATE/pids" "$STATE/log" "$STATE/run" "$STATE/etc"
  install_packages
  [ -s "$STATE/etc/db.password" ] || (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$STATE/etc/db.password")
  write_configs
  export SLURM_CONF="$STATE/etc/slurm.conf"  # daemons find slurmdbd.conf beside it
  start_munge
  start_mariadb
  start slurmdbd slurmdbd -D
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER || sacctmgr -i add cluster $CLUSTER >/dev/null
  start slurmctld slurmctld -D
  wait_for 60 slurmctld scontrol ping
  start slurmd slurmd -D
  wait_for 120 "the node to be idle" sh -c "sinfo -h -N -o %t | grep -qx idle"
  say "up: $(sinfo -h -N -o '%N %c CPUs %m MB %t') (state in $STATE)"
}

stop() {  # stop NAME: TERM, then KILL after 30 s, the daemon up started
  local name=$1 pid
  alive "$name" || { rm -f "$STATE/pids/$name"; return 0; }
  pid=$(cat "$STATE/pids/$name")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STATE/pids/$name"
  say "stopped $name (pid $pid)"
}

down() {
  [ -d "$STATE" ] || { say "not up (no $STATE)"; return 0; }
  export SLURM_CONF="$STATE/etc/slurm.conf"
  # Jobs first, so no job's processes outlive the cluster.
  if alive slurmctld; then
    squeue -h -o %i | xargs -r scancel || true
    for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[i]}"; done
  [ -e "$STATE/created-munge-key" ] && rm -f /etc/munge/munge.key
  [ -e "$STATE/created-munge-run" ] && rm -rf /run/munge
  if [ -e $CONF ] && grep -qxF "$MARK" $CONF; then
    rm -f $CONF
    rmdir --ignore-fail-on-non-empty "$(dirname $CONF)"
  fi
  rm -rf "$STATE"
  say "down"
}

if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  exec sudo -n SOAP_SLURM_STATE="$STATE" SOAP_SLURM_DB_PORT="$DB_PORT" bash "$0" "$@"
fi
case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
