#!/usr/bin/env bash
# Sample the machine while a chain runs, to tell a busy GPU from a starved host when trials train slower than
# benchmarks/bench_core.py says they should (session 8: three NFE-3 workers at about 11 s an iteration where
# bench_core timed 51 ms in one process):
#   bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh /tmp/bd/out/monitor [SECONDS]
# Once: CPUs, the cgroup's CPU quota, memory, GPUs. Every SECONDS (default 20) a sample into DIR/monitor.log: the
# time, the load average, per GPU its utilisation, memory, power and SM clock, the processes on the GPUs, the
# cgroup's CPU throttling counters, free memory, the disk under /tmp (the banks' files), and the busiest processes
# and threads (top). It runs until it is
# stopped (`bash scripts/gpu/bg.sh stop mon`) or the machine goes; bring DIR back with the wait calls' logs.
set -uo pipefail
DIR=${1:?a folder for monitor.log}
EVERY=${2:-20}
mkdir -p "$DIR"
exec >> "$DIR/monitor.log" 2>&1
have() { command -v "$1" > /dev/null; }
cg() { for f in "$@"; do [ -r "$f" ] && echo "$f: $(tr '\n' ' ' < "$f")"; done; }
echo "== $(date -u +%FT%TZ) monitor every ${EVERY}s on $(hostname)"
echo "cpus: nproc $(nproc), online $(cat /sys/devices/system/cpu/online 2>/dev/null)"
cg /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpuset.cpus.effective /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
  /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/memory.max
have nvidia-smi && nvidia-smi --query-gpu=index,name,pci.bus_id,clocks.max.sm,power.limit --format=csv,noheader \
  || echo "nvidia-smi: not here"
while true; do
  echo "== $(date -u +%T) load $(cut -d' ' -f1-4 /proc/loadavg)"
  if have nvidia-smi; then
    nvidia-smi --query-gpu=index,utilization.gpu,memory.used,power.draw,clocks.sm --format=csv,noheader
    nvidia-smi --query-compute-apps=gpu_bus_id,pid,used_memory --format=csv,noheader
  fi
  cg /sys/fs/cgroup/cpu.stat /sys/fs/cgroup/cpu/cpu.stat
  free -g | sed -n 2p
  df -B1G --output=size,used,avail /tmp | sed -n 2p | sed 's/^/disk GiB (size used avail) of \/tmp:/'
  if have top; then  # top's second frame: its first has no interval to measure CPU use over
    top -c -b -n 2 -d 1 -w 160 -o %CPU | awk '/^top -/ {n++} n == 2' | sed -n '7,19p'     # processes
    top -H -b -n 2 -d 1 -w 160 -o %CPU | awk '/^top -/ {n++} n == 2' | sed -n '8,19p'  # threads
  fi
  sleep "$EVERY"
done
