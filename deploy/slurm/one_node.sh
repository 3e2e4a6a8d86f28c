#!/bin/bash
# A throwaway one-node Slurm on this machine, from Debian's packages, to run nightly.sbatch for real:
#   apt-get install slurmctld slurmd slurm-client munge
#   deploy/slurm/one_node.sh start DIR    # prints: export SLURM_CONF=DIR/slurm.conf
#   SLURM_CONF=DIR/slurm.conf sbatch --wait deploy/slurm/nightly.sbatch
#   deploy/slurm/one_node.sh stop DIR
# Everything (munge key and socket, config, state, logs) lives in DIR; nothing in /etc is touched.
# munged, slurmctld and slurmd run as the calling user, on free ports of 127.0.0.1, and only that
# user's jobs run. The node has CR_Core_Memory, like most production clusters: every job is given the
# memory it requests, and one that requests none is given the node's whole memory (SLURM_NODE_MEMORY
# MB, default 8000), so nothing else runs beside it. tests/test_deploy.py runs this.
set -euo pipefail
action=${1:?usage: one_node.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: one_node.sh start|stop DIR}")

stop() {
  for daemon in slurmd slurmctld munged; do
    pid=$(cat "$dir/$daemon.pid" 2>/dev/null || true)
    if [ -n "$pid" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/$daemon.pid"
    fi
  done
}

if [ "$action" = stop ]; then stop; exit 0; fi
[ "$action" = start ] || { echo "one_node.sh: unknown action '$action' (start or stop)" >&2; exit 2; }
for program in munged mungekey slurmctld slurmd sinfo; do
  command -v "$program" >/dev/null || { echo "one_node.sh: $program is not installed (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 2; }
done

mkdir -p "$dir/state" "$dir/spool"
chmod 700 "$dir"
user=$(id -un)
node=$(hostname -s)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

[ -s "$dir/munge.key" ] || mungekey --create --keyfile="$dir/munge.key"
munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"

cat > "$dir/slurm.conf" <<EOF
ClusterName=gradjob-one-node
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1   # a throwaway node: schedule at once, not every minute
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(slurmd -C | sed -n "s/.* CPUs=\([0-9]*\) .*/\1/p") RealMemory=${SLURM_NODE_MEMORY:-8000} State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -i
slurmd
for _ in $(seq 300); do
  if [ "$(sinfo -h -n "$node" -o %T 2>/dev/null)" = idle ]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.1
done
echo "one_node.sh: node $node did not become idle in 30 s (see $dir/slurmctld.log and $dir/slurmd.log)" >&2
stop
exit 1
