#!/usr/bin/env bash
# Install (if needed) and start a real SLURM of several nodes on one Debian machine, as root: one
# slurmd per node (SLURM's multiple-slurmd mode, `slurmd -N <node>`: each its own port, spool, log
# and pid file; all at 127.0.0.1). Jobs go to the least loaded node (CR_LLN), so worker jobs spread.
# For tests and for trying the SLURM path on a workstation; stop it with stop.sh.
#   SLURM_NODES    nodes (default 3: node1..node3)
#   SLURM_CPUS     CPUs advertised per node (default 8: more than the machine has, so several
#                  1-core worker jobs run at once; SlurmdParameters=config_overrides)
#   SLURM_MEM_MB   memory advertised per node (default: 3/4 of the machine)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "start.sh: run as root" >&2; exit 2; }
NODES=${SLURM_NODES:-3}
CPUS=${SLURM_CPUS:-8}
MEM=${SLURM_MEM_MB:-$(awk '/MemTotal/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)}
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
host=$(hostname -s)

# munge: authentication between the SLURM daemons and clients
mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

# slurm.conf for NODES nodes at 127.0.0.1 (no systemd, no cgroups)
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
for n in $(seq 1 "$NODES"); do mkdir -p "/var/spool/slurmd/node$n"; done
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory,CR_LLN
DefMemPerCPU=1000
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmdTimeout=20
NodeName=node[1-${NODES}] NodeHostname=${host} NodeAddr=127.0.0.1 Port=[17001-$((17000 + NODES))] CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
for n in $(seq 1 "$NODES"); do  # a slurmd per node not running yet
  pid=$(cat "/run/slurmd-node$n.pid" 2>/dev/null || true)
  { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || /usr/sbin/slurmd -N "node$n"
done
for _ in $(seq 1 60); do
  up=$(sinfo -h -N -o "%N %T" 2>/dev/null | grep -cE " (idle|mixed|allocated)$" || true)
  if [ "$up" -ge "$NODES" ]; then
    echo "SLURM is up: $(sinfo -h -o '%P %D nodes %T %c CPUs %m MB')"
    exit 0
  fi
  scontrol update NodeName="node[1-$NODES]" State=RESUME >/dev/null 2>&1 || true
  sleep 0.5
done
echo "start.sh: SLURM did not come up; see /var/log/slurm/" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-node*.log >&2 || true
exit 1
