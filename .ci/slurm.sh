#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for sslbench's sweep tests (CI and developers).
#
#   bash .ci/slurm.sh start   # install slurm-wlm + munge if missing, write slurm.conf, start daemons
#   bash .ci/slurm.sh stop    # stop slurmd, slurmctld and munged
#
# Needs root and Debian. No cgroups (proctrack/linuxproc, task/none) and no slurmdbd: sslbench's
# sweep status reads squeue and MLflow, never sacct. The node line comes from `slurmd -C`, so
# the cluster is named after this machine's own hostname.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm

start() {
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" /run/munge
    chown slurm:slurm "$STATE_DIR" "$LOG_DIR"
    chown munge:munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged --force"

    local host node
    host=$(hostname -s)
    node=$(slurmd -C | head -n 1)
    cat >"$CONF_DIR/slurm.conf" <<EOF
ClusterName=sslbench-ci
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core  # memory is checked against RealMemory, not consumed
SchedulerType=sched/backfill
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
MaxArraySize=10000
JobRequeue=1
KillWait=10
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -i
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
    for _ in $(seq 1 60); do
        if sinfo -h -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
            echo "slurm: one-node cluster '$host' is up"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm: the node did not come up; sinfo says:" >&2
    sinfo >&2 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    return 1
}

stop() {
    local daemon
    for daemon in slurmd slurmctld munged; do
        pkill -x "$daemon" || true
        for _ in $(seq 1 40); do pgrep -x "$daemon" >/dev/null || break; sleep 0.25; done
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
