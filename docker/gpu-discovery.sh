#!/usr/bin/env bash
# Spark resource discovery script for GPUs (spark.{executor,worker,driver}.resource.gpu.discoveryScript).
# Prints the GPUs this container sees as Spark's ResourceInformation JSON, e.g.
#   {"name": "gpu", "addresses": ["0","1"]}
# Fails (and so fails the executor's start) when nvidia-smi is missing or sees no GPU: run the
# container with the NVIDIA container toolkit (`docker run --gpus ...`).
set -euo pipefail

indices=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ')
if [[ -z "${indices}" ]]; then
  echo "gpu-discovery.sh: nvidia-smi lists no GPU" >&2
  exit 1
fi
addresses=$(printf '%s\n' "${indices}" | sed 's/.*/"&"/' | paste -sd, -)
printf '{"name": "gpu", "addresses": [%s]}\n' "${addresses}"
