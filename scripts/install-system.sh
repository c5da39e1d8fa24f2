#!/usr/bin/env bash
# Installs the Debian packages the tests and demo need, once; checks the Go toolchain.
set -euo pipefail

CACHE=${TIERSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierserve}
LOG="$CACHE/logs/install-system.log"
mkdir -p "$CACHE/logs"

# command -> Debian package
declare -A PACKAGES=([prometheus]=prometheus [lua5.4]=lua5.4 [openssl]=openssl)
# --node: what the real node (tierserve.dev.controlplane.node) and the image builds
# (tierserve.dev.images) need besides: a container runtime, CNI plugins, iptables, buildah.
if [ "${1:-}" = "--node" ]; then
  PACKAGES+=([containerd]=containerd [runc]=runc [iptables]=iptables [conntrack]=conntrack
             [ip]=iproute2 [gcc]=gcc [buildah]=buildah [debootstrap]=debootstrap)
  [ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] \
    || PACKAGES+=([__cni]=containernetworking-plugins)
fi
missing=()
for cmd in "${!PACKAGES[@]}"; do
  PATH=$PATH:/usr/sbin:/sbin command -v "$cmd" >/dev/null 2>&1 || missing+=("${PACKAGES[$cmd]}")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]} (log: $LOG)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "${missing[@]}"; } >>"$LOG" 2>&1 \
    || { echo "install-system: apt-get install ${missing[*]} failed; see $LOG" >&2; exit 1; }
fi

if ! command -v go >/dev/null 2>&1; then
  echo "install-system: Go not found; the local control plane is built from Go modules (install Go >= 1.26)" >&2
  exit 1
fi
