#!/usr/bin/env bash
# Build llama.cpp's `llama-server` once from the llama.cpp vendored in the llama-cpp-python sdist
# and cache it outside the clone, keyed by version:
#   $EKT_CACHE_DIR/llama.cpp/<version>/bin/llama-server
# A second run finds the binary and returns at once. Prints the binary's path on its last line.
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

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$(dirname "$CACHE")"
WORK="$(mktemp -d "$(dirname "$CACHE")/build-$VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "building llama-server from llama-cpp-python==$VERSION in $WORK (one time)" >&2
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
cmake --build "$WORK/build" --target llama-server llama-batched-bench -j "$JOBS" >&2

mkdir -p "$WORK/out/bin"
cp "$WORK/build/bin/llama-server" "$WORK/out/bin/"
cp "$WORK/build/bin/llama-batched-bench" "$WORK/out/bin/" 2>/dev/null || true
echo "llama.cpp vendored in llama-cpp-python $VERSION (sdist from PyPI)" \
  > "$WORK/out/SOURCE"
# Publish atomically: a concurrent build either finds the finished folder or makes its own.
mv -T "$WORK/out" "$CACHE" 2>/dev/null || true
echo "$BIN"
