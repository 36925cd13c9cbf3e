#!/usr/bin/env bash
# Stop the SLURM started by start.sh, every node's slurmd (cancels all jobs first).
set -u
scancel --full --quiet -u "$(id -un)" 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
pkill -x munged 2>/dev/null || true
for _ in $(seq 1 20); do
  pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
  sleep 0.25
done
echo "SLURM stopped"
