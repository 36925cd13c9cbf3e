#!/usr/bin/env bash
# Install (if needed) and start a real single-node SLURM on a Debian machine, as root.
# For tests and for trying the SLURM path on a workstation; stop it with stop.sh.
#   SLURM_CPUS     CPUs advertised (default 8: more than the machine has, so several
#                  1-core worker jobs run at once; SlurmdParameters=config_overrides)
#   SLURM_MEM_MB   memory advertised (default: 3/4 of the machine)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "start.sh: run as root" >&2; exit 2; }
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

# slurm.conf for one node at 127.0.0.1 (no systemd, no cgroups)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    echo "SLURM is up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
    exit 0
  fi
  scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
  sleep 0.5
done
echo "start.sh: SLURM did not come up; see /var/log/slurm/" >&2
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
