#!/usr/bin/env bash
# A real one-node Slurm cluster on this host, for the engine tests and for trying --executor slurm:
# munged, a MariaDB for the accounting (sacct: submitit reads job states from it), slurmdbd, slurmctld
# and slurmd, from Debian's packages, all state under one directory, loopback only.
#   scripts/slurm-cluster.sh start DIR   installs the packages if missing (root, apt), starts the daemons from an empty state,
#                                        waits until `sinfo` shows the node idle, prints SLURM_CONF=DIR/slurm.conf
#   scripts/slurm-cluster.sh stop DIR    stops what `start DIR` started (by the pids it wrote) and waits for it
#   scripts/slurm-cluster.sh install     only installs the packages (what CI runs first: .ci/engines.sh)
# Clients find the cluster through SLURM_CONF (export it); nothing in /etc is changed. The node has 2
# CPUs, one partition `debug` (default, no time limit), job arrays, and requeue allowed.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
packages="slurm-wlm slurmdbd munge mariadb-server"

install_packages() {  # the Debian packages, when one of their daemons is missing (needs root)
    command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v munged >/dev/null \
        && command -v mariadbd >/dev/null && return 0
    [[ $(id -u) == 0 ]] || { echo "Slurm is not installed and installing it needs root: apt-get install $packages" >&2; return 1; }
    local log=${dir:-/tmp}/apt.log
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >>"$log" 2>&1; }
    apt_install || { apt-get update -q >>"$log" 2>&1 && apt_install; } || { echo "could not install $packages (see $log)" >&2; return 1; }
}

if [[ $cmd == install ]]; then
    install_packages
    exit
fi
[[ ( $cmd == start || $cmd == stop ) && -n $dir ]] || { echo "usage: $0 start|stop DIR, or $0 install" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
    local pids=() f
    for f in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/slurmdbd.pid "$dir"/mariadbd.pid "$dir"/munged.pid; do
        [[ -s $f ]] && pids+=("$(cat "$f")")
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do  # the daemons exit within a second or two; SIGKILL whatever has not after 10 s
        kill -0 "${pids[@]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
    rm -f "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/slurmdbd.pid "$dir"/mariadbd.pid "$dir"/munged.pid
}

if [[ $cmd == stop ]]; then
    # jobs still running: slurmd's job steps (slurmstepd) outlive slurmd, so cancel them first
    if [[ -s $dir/slurmctld.pid ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do
            [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h -t running,completing 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    stop
    exit 0
fi

install_packages
stop  # a previous start of the same DIR

host=$(hostname -s)
user=$(id -un)
port=${SLURM_TEST_PORT:-7817}  # slurmctld; slurmd listens on port+1
mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)  # MB a job may ask for: half the host
rm -rf "$dir/ctld" "$dir/spool" "$dir/db"  # an empty state: job ids from 1 in slurmctld and in the accounting
mkdir -p "$dir/munge" "$dir/ctld" "$dir/spool"
chmod 700 "$dir" "$dir/munge"
[[ -s $dir/munge/munge.key ]] || { head -c 1024 /dev/urandom >"$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
# cred_expire=5: a requeued job waits cred_expire seconds before it starts again (default 120)
cat >"$dir/slurm.conf" <<CONF
ClusterName=mmcl
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((port + 2))
AccountingStoragePass=$dir/munge/munge.socket
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
MaxArraySize=1001
ReturnToService=2
MinJobAge=600
KillWait=2
PlugStackConfig=$dir/plugstack.conf
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
: >"$dir/plugstack.conf"
cat >"$dir/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$((port + 2))
SlurmUser=$user
PidFile=$dir/slurmdbd.pid
LogFile=$dir/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$user
StorageLoc=slurm_acct_db
CONF
chmod 600 "$dir/slurmdbd.conf"
export SLURM_CONF=$dir/slurm.conf
export MYSQL_UNIX_PORT=$dir/db.sock  # slurmdbd reaches MariaDB through this socket (no TCP port)

munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
mariadb-install-db --no-defaults --user="$user" --datadir="$dir/db" --auth-root-authentication-method=normal \
    --skip-test-db >"$dir/mariadb-install.log" 2>&1 || { echo "mariadb-install-db failed (see $dir/mariadb-install.log)" >&2; exit 1; }
setsid mariadbd --no-defaults --user="$user" --datadir="$dir/db" --socket="$MYSQL_UNIX_PORT" --skip-networking \
    --pid-file="$dir/mariadbd.pid" --log-error="$dir/mariadbd.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
until [[ -S $MYSQL_UNIX_PORT ]] || (( SECONDS > 30 )); do sleep 0.1; done
slurmdbd
until sacctmgr -n list cluster >/dev/null 2>&1 || (( SECONDS > 45 )); do sleep 0.2; done
slurmctld -c -f "$SLURM_CONF"   # -c: no jobs from an earlier cluster in DIR
slurmd -f "$SLURM_CONF"
until (( SECONDS > 60 )); do  # SECONDS: since the script started
    state=$(sinfo -h -N -o %t 2>/dev/null || true)
    [[ $state == idle ]] && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.1
done
echo "Slurm did not come up (sinfo: '${state:-no answer}'); logs in $dir" >&2
tail -n 5 "$dir"/slurmctld.log "$dir"/slurmd.log >&2 || true
stop
exit 1
