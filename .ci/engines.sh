#!/usr/bin/env bash
# CI: what the engine tests (tests/test_engines.py) need on this machine kind, installed before
# `make test`: Slurm, its accounting and munge from Debian's packages (root). Ray comes with
# requirements.txt. The tests start and stop their own clusters (scripts/slurm-cluster.sh,
# scripts/ray-cluster.sh); with CI=true a cluster that cannot start fails its tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/slurm-cluster.sh install
