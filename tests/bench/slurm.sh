#!/usr/bin/env bash
# Starts Slurm on this machine for the side-by-side benchmarks: munged,
# slurmctld and one slurmd whose node has SLOTS CPUs (default 6, the slots
# of the 3-peer shoal swarm it is compared with), all under WORK. Needs
# root and Debian's slurm-wlm and munge (installed if missing).
#
#   tests/bench/slurm.sh start [SLOTS]    # then srun/sbatch work
#   tests/bench/slurm.sh stop
set -euo pipefail
WORK=/tmp/shoal-slurm
ETC=/etc/slurm
case "${1:-start}" in
stop)
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  exit 0
  ;;
start) ;;
*) echo "usage: $0 start [SLOTS] | stop" >&2; exit 2 ;;
esac
SLOTS=${2:-6}
command -v slurmctld >/dev/null || { apt-get update && apt-get install -y slurm-wlm munge; }
"$0" stop
mkdir -p "$WORK"/{ctld,d,log} "$ETC" /run/munge
chown munge:munge /run/munge
[ -f /etc/munge/munge.key ] || { mungekey --create && chown munge:munge /etc/munge/munge.key; }
sudo -u munge munged 2>/dev/null || runuser -u munge -- munged
# One node with SLOTS CPUs (config_overrides: the node may claim more
# CPUs than the machine has, as the shoal peers offer more slots than
# cores); no cgroups (a container), process tracking by /proc.
cat >"$ETC/slurm.conf" <<CONF
ClusterName=bench
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/ctld
SlurmdSpoolDir=$WORK/d
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MaxJobCount=20000
MaxArraySize=10001
# The high-throughput settings of Slurm's own guide (slurm.schedmd.com/high_throughput.html):
# schedule at once on every event, not on the default 3 s batch delay.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=10000,bf_interval=1,max_rpc_cnt=0
SlurmctldDebug=error
SlurmdDebug=error
NodeName=localhost CPUs=$SLOTS State=UNKNOWN
PartitionName=bench Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld
slurmd
for _ in $(seq 100); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && { echo "slurm up: $(sinfo -h -o '%P %D %c %T')"; exit 0; }
  sleep 0.2
done
echo "slurm did not come up; see $WORK/log" >&2
exit 1
