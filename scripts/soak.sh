#!/usr/bin/env bash
# The fault harness for as long as asked: random histories under a nemesis,
# checked by the oracle, on one backend.
#   scripts/soak.sh [--minutes N] [--backend B] [--seed S] [--stop-at-first]
# B: memory, memory-bus, redis, redis-sentinel, redis-cluster, nats, nats-r3.
# Prints a line per history and a SUMMARY line at the end; exits non-zero
# when any history broke the model (its seed is on its line).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=20 backend=memory seed=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --stop-at-first) export SOAK_STOP_AT_FIRST=1; shift ;;
    *) echo "usage: $0 [--minutes N] [--backend B] [--seed S]" >&2; exit 2 ;;
  esac
done
SOAK_MINUTES="$minutes" SOAK_BACKEND="$backend" SOAK_SEED="$seed" \
  cargo test --all-features --test faults -- --ignored --exact soak --nocapture
