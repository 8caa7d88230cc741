#!/usr/bin/env bash
# Rebuild the shipped pools (servegen_load/pools/*.npz) from ServeGen's released data.
#
# Source: ../shared/data/servegen (a copy of alibaba/ServeGen `data/`, commit named in
# ../shared/data/README.md; 20 of the largest dataset JSONs are absent there, so those clients get
# the documented fallback: the pool's rate-weighted length mixture, listed in each pool's `fallback`).
# Each pool records its source folder, ServeGen commit, this import command and ks_max in its
# metadata (`servegen-load inspect m-large --json` shows the source; `meta` holds the rest).
#
# Usage, from the repository root:   scripts/build_pools.sh [DATA_DIR]
#   DATA_DIR defaults to ../shared/data/servegen. Takes ~15 s (m-large ~7 s) on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/servegen}"
OUT=servegen_load/pools
KS_MAX=0.004   # max Kolmogorov-Smirnov distance of every stored length table to ServeGen's original

for src in language/m-large language/m-small multimodal/mm-image reason/deepseek-r1; do
  name="$(basename "$src")"
  servegen-load pool import "$DATA/$src" -o "$OUT/$name.npz" --ks-max "$KS_MAX"
  chmod 644 "$OUT/$name.npz"   # atomic_write creates 0600 temp files; package data must be readable
done
du -ch "$OUT"/*.npz
