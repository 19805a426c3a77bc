#!/bin/sh
# Builds the example jobs as WASI preview 1 modules (commands, and
# stepper.c as a reactor) with Debian's
# clang and wasi-libc (apt-get install clang lld wasi-libc
# libclang-rt-14-dev-wasm32); no rustup target is needed.
#   examples/jobs/build.sh [OUT_DIR]     (default: examples/jobs/out)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
for src in "$here"/*.c; do
    name=$(basename "$src" .c)
    # A job run in steps (it exports shoal_step) is a reactor, not a command.
    model=command
    grep -q shoal_step "$src" && model=reactor
    clang --target=wasm32-wasi -O2 -mexec-model=$model -o "$out/$name.wasm" "$src"
done
ls "$out"
