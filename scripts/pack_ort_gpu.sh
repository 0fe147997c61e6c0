#!/usr/bin/env bash
# onnxruntime-gpu for the lent GPU machine, which has no package registry and takes at most 64 MiB
# per command, the project's tree included. Two halves:
#
#   here:           bash scripts/pack_ort_gpu.sh pack [VERSION]     (default 1.31.1, built for CUDA 13)
#   on the machine: bash scripts/pack_ort_gpu.sh unpack SHA256      (in the measuring command)
#
# `pack` downloads the wheel for the machine's Python (3.12, x86-64 Linux), unpacks it and
# recompresses it with xz (about 244 MiB as a wheel, about 194 MiB as .tar.xz: one part fewer), and
# splits that into .gpu-wheels/part-*, each sized so that it plus the tree stays under 64 MiB. It
# keeps .gpu-wheels/ out of git (info/exclude) and prints the commands for the machine.
#
# On the machine a file sent with one command is gone at the next unless sent again, while /tmp
# stays as long as the machine is held (about 30 s after each command). So every command that
# brings a part moves it to /tmp at once, and the commands follow each other back to back:
#   mkdir -p /tmp/ortp && mv .gpu-wheels/part-* /tmp/ortp/ && ls -la /tmp/ortp
# `unpack` then reassembles /tmp/ortp/part-*, checks the SHA-256 `pack` printed, extracts into
# /tmp/ort and proves that a one-Conv model runs on CUDAExecutionProvider with CPU fallback
# disabled (after `import torch`, whose CUDA and cuDNN libraries the wheel is told to use through
# onnxruntime.preload_dlls()); when that fails the check still runs, without ort:cuda:
#   if bash scripts/pack_ort_gpu.sh unpack SHA; then P=/tmp/ort:.; else P=.; fi; PYTHONPATH=$P OUT=$OUT make gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpu-wheels

pack() {
  local version="${1:-1.31.1}"
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >>"$exclude"
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$tmp/dl" "onnxruntime-gpu==$version"
  mkdir -p "$tmp/unpacked"
  (cd "$tmp/unpacked" && python3 -m zipfile -e "$tmp"/dl/onnxruntime_gpu-*.whl .)
  tar -C "$tmp/unpacked" -cf - . | xz -9 -T0 >"$tmp/ort.tar.xz"
  # What travels beside a part: tracked files and untracked ones git does not ignore.
  local tree part
  tree=$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  part=$(((63 * 1024 * 1024 - tree) / 1024 / 1024))
  if [ "$part" -lt 16 ]; then
    echo "the tree is $((tree / 1024 / 1024)) MiB: too large to send parts of onnxruntime-gpu beside it" >&2
    exit 1
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  split -b "${part}M" "$tmp/ort.tar.xz" "$dir/part-"
  local sum
  sum=$(sha256sum "$tmp/ort.tar.xz" | cut -d' ' -f1)
  ls -la "$dir"
  cat <<MSG
tree $((tree / 1024)) KiB, parts of at most ${part} MiB. On the machine, one command per part, back to
back, each sending only that part (e.g. carry .gpu-wheels/part-aa), each running:
  mkdir -p /tmp/ortp && mv $dir/part-* /tmp/ortp/ && ls -la /tmp/ortp
then the measuring command, sending no part:
  if bash scripts/pack_ort_gpu.sh unpack $sum; then P=/tmp/ort:.; else P=.; fi; CCNBENCH_GIT_COMMIT=$(git rev-parse HEAD) PYTHONPATH=\$P OUT=\$OUT make gpu-check
If the machine went back between parts, /tmp/ortp went with it: run the check alone (ort:cuda is then unavailable).
MSG
}

unpack() {
  local sum="${1:?unpack needs the SHA-256 that pack printed}"
  cat /tmp/ortp/part-* >/tmp/ort.tar.xz
  echo "$sum  /tmp/ort.tar.xz" | sha256sum -c -
  rm -rf /tmp/ort && mkdir -p /tmp/ort
  tar -C /tmp/ort -xJf /tmp/ort.tar.xz
  PYTHONPATH="/tmp/ort:." python3 - <<'EOF'
import numpy as np
import torch  # first: its CUDA and cuDNN libraries are the ones the wheel is told to load

import onnxruntime as ort
from ccnbench.formats.onnx_export import tiny_conv_onnx

if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(tiny_conv_onnx(), sess_options=so, providers=["CUDAExecutionProvider"])
y = session.run(None, {"x": np.ones((1, 2, 6, 6, 6), dtype=np.float32)})[0]
assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
print("onnxruntime", ort.__version__, "runs on", session.get_providers(), "output", y.shape, "torch", torch.__version__)
EOF
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  unpack) shift; unpack "$@" ;;
  *) echo "usage: $0 pack [VERSION] | unpack SHA256" >&2; exit 2 ;;
esac
