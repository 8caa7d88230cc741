#!/usr/bin/env bash
# A realistic ServeGen load against vLLM on a local NVIDIA GPU; for manual runs, not CI.
#
#   benchmarks/gpu_vllm.sh MODEL_DIR [SCENARIO]         (SCENARIO default: scenarios/language.yaml)
#
# Starts `vllm serve MODEL_DIR` on 127.0.0.1:$PORT (default 8000) with prefix caching, waits for
# /health, runs `servegen-load run SCENARIO --endpoint http://127.0.0.1:$PORT --server-family vllm`,
# which prints the summary, and stops the server. Everything it wrote stays in $OUT
# (default out/gpu_vllm-DATE): vllm.log, results.jsonl, summary.json, nvidia-smi.txt.
# Needs: vLLM installed (`vllm` on PATH, or VLLM="python -m vllm.entrypoints.openai.api_server"),
# servegen-load installed (`pip install -e .`), nvidia-smi. Extra vLLM flags: VLLM_ARGS="--max-num-seqs 512".
# Env: PORT, OUT, SERVED_MODEL (default: model), START_TIMEOUT (s, default 900), RUN_ARGS (extra run flags).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,12p' "$0"; exit 2
fi
MODEL_DIR=$1
SCENARIO=${2:-scenarios/language.yaml}
PORT=${PORT:-8000}
SERVED_MODEL=${SERVED_MODEL:-model}
START_TIMEOUT=${START_TIMEOUT:-900}
OUT=${OUT:-out/gpu_vllm-$(date +%Y%m%d-%H%M%S)}
VLLM=${VLLM:-vllm serve}
URL=http://127.0.0.1:$PORT

cd "$(dirname "$0")/.."
[ -e "$MODEL_DIR" ] || { echo "gpu_vllm: no model directory at $MODEL_DIR" >&2; exit 2; }
[ -f "$SCENARIO" ] || { echo "gpu_vllm: no scenario file at $SCENARIO" >&2; exit 2; }
command -v nvidia-smi >/dev/null || { echo "gpu_vllm: nvidia-smi not found: this script needs an NVIDIA GPU" >&2; exit 2; }
command -v servegen-load >/dev/null || { echo "gpu_vllm: servegen-load not on PATH (pip install -e .)" >&2; exit 2; }
if curl -sf "$URL/health" >/dev/null 2>&1; then
  echo "gpu_vllm: something already answers on $URL; set PORT" >&2; exit 2
fi
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia-smi.txt"
head -n 15 "$OUT/nvidia-smi.txt"

# shellcheck disable=SC2086  # VLLM and VLLM_ARGS are word lists on purpose
setsid $VLLM "$MODEL_DIR" --host 127.0.0.1 --port "$PORT" --served-model-name "$SERVED_MODEL" \
  --enable-prefix-caching ${VLLM_ARGS:-} >"$OUT/vllm.log" 2>&1 &
VLLM_PID=$!
stop_vllm() {
  # setsid made vLLM the leader of its own process group: end the group (API server + engine core).
  kill -TERM -- "-$VLLM_PID" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$VLLM_PID" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$VLLM_PID" 2>/dev/null || true
}
trap stop_vllm EXIT

t0=$(date +%s)
until curl -sf "$URL/health" >/dev/null 2>&1; do
  if ! kill -0 "$VLLM_PID" 2>/dev/null; then echo "gpu_vllm: vLLM exited:" >&2; tail -n 40 "$OUT/vllm.log" >&2; exit 1; fi
  if [ $(( $(date +%s) - t0 )) -ge "$START_TIMEOUT" ]; then
    echo "gpu_vllm: vLLM not healthy after ${START_TIMEOUT}s:" >&2; tail -n 40 "$OUT/vllm.log" >&2; exit 1
  fi
  sleep 1
done
echo "gpu_vllm: vLLM ready on $URL after $(( $(date +%s) - t0 ))s (log $OUT/vllm.log)"

# run prints the summary (latency percentiles, throughput, send lag, fidelity) when it ends.
# shellcheck disable=SC2086  # RUN_ARGS is a word list on purpose
servegen-load run "$SCENARIO" --endpoint "$URL" --server-family vllm --model "$SERVED_MODEL" \
  -o "$OUT/results.jsonl" --summary-json "$OUT/summary.json" ${RUN_ARGS:-}
echo "gpu_vllm: results in $OUT (again: servegen-load report $OUT/results.jsonl)"
