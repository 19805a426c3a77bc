#!/bin/sh
# Builds the example jobs as WASI preview 1 command modules with Debian's
# clang and wasi-libc (apt-get install clang lld wasi-libc
# libclang-rt-14-dev-wasm32); no rustup target is needed.
#   examples/jobs/build.sh [OUT_DIR]     (default: examples/jobs/out)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
for src in "$here"/*.c; do
    name=$(basename "$src" .c)
    clang --target=wasm32-wasi -O2 -o "$out/$name.wasm" "$src"
done
ls "$out"
