#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (and `llama-batched-bench`, the engine's own batched-decode
# benchmark, for benchmarks/sampling_throughput.py --vs llama.cpp) once from the llama.cpp
# vendored in the llama-cpp-python sdist and cache them outside the clone, keyed by version:
#   $EKT_CACHE_DIR/llama.cpp/<version>/bin/llama-server
#   $EKT_CACHE_DIR/llama.cpp/<version>/bin/llama-batched-bench
# A second run finds the binaries and returns at once; a cache that has only llama-server (an
# older build) gets llama-batched-bench added. Prints llama-server's path on its last line.
# Needs cmake and a C++ compiler; the sdist comes from PyPI through pip.
set -euo pipefail

# The version is declared once, in ekt (llamacpp_server.LLAMA_CPP_VERSION), where the tests and
# the backend look for the binary; LLAMA_CPP_PYTHON_VERSION overrides it.
PYTHON="${PYTHON:-python3}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-$("$PYTHON" -c \
  'from ekt.generation.backends.llamacpp_server import LLAMA_CPP_VERSION as v; print(v)')}"
CACHE="${EKT_CACHE_DIR:-$HOME/.cache/ekt}/llama.cpp/$VERSION"
BIN="$CACHE/bin/llama-server"
PIP="${PIP:-pip}"
JOBS="${JOBS:-$(nproc)}"

TARGETS=(llama-server llama-batched-bench)
MISSING=()
for t in "${TARGETS[@]}"; do
  [ -x "$CACHE/bin/$t" ] || MISSING+=("$t")
done
if [ "${#MISSING[@]}" -eq 0 ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$(dirname "$CACHE")"
WORK="$(mktemp -d "$(dirname "$CACHE")/build-$VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "building ${MISSING[*]} from llama-cpp-python==$VERSION in $WORK (one time)" >&2
"$PIP" download -q --no-binary llama-cpp-python --no-deps --dest "$WORK" "llama-cpp-python==$VERSION"
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"

GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
# Native CPU flags: the binary is built on, and cached for, the machine that runs it.
cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_CURL=OFF -DGGML_NATIVE=ON >&2
cmake --build "$WORK/build" --target "${MISSING[@]}" -j "$JOBS" >&2

if [ -d "$CACHE/bin" ]; then
  # Add what an older cache lacks, each file atomically (a rename within the cache's folder).
  for t in "${MISSING[@]}"; do
    cp "$WORK/build/bin/$t" "$CACHE/bin/.$t.tmp$$"
    mv -f "$CACHE/bin/.$t.tmp$$" "$CACHE/bin/$t"
  done
else
  mkdir -p "$WORK/out/bin"
  for t in "${MISSING[@]}"; do
    cp "$WORK/build/bin/$t" "$WORK/out/bin/"
  done
  echo "llama.cpp vendored in llama-cpp-python $VERSION (sdist from PyPI)" \
    > "$WORK/out/SOURCE"
  # Publish atomically: a concurrent build either finds the finished folder or makes its own.
  mv -T "$WORK/out" "$CACHE" 2>/dev/null || true
fi
echo "$BIN"
