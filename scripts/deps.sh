#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test streamwatch:
# redis-server (the server the tests load the module into) and libclang (bindgen,
# used by the redis-module crate at build time). Idempotent; installs nothing twice.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1 || need+=(libclang1-14)
ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1 || need+=(libclang-common-14-dev)

if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi
echo "deps: $(redis-server --version | cut -d' ' -f1-3)"
