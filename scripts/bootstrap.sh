#!/usr/bin/env bash
# Create the virtual environment and install gpupool with its development tools.
# Works on a fresh Debian machine as root: installs python3-venv with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: need root to apt-get install $*" >&2; exit 1
  fi
  apt-get update -qq
  # No service starts on install (docker.io's would set up a bridge and iptables rules on
  # this machine): policy-rc.d answers "not allowed" while apt runs, unless one is there.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
    [ "$own_policy" -eq 1 ] && rm -f "$policy"; return 1; }
  [ "$own_policy" -eq 1 ] && rm -f "$policy"
  return 0
}

if ! command -v "$PYTHON" >/dev/null; then
  apt_install python3 python3-venv python3-pip
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: gpupool needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V))" >&2; exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi
# The mesh: wireguard-go (userspace WireGuard, for kernels without the module), wg, ip,
# iptables, ping (overlay probes) and iperf3 (bandwidth); the sealed lease: bubblewrap (the
# namespace sandbox), gocryptfs and fuse3 (the encrypted lease disk), Debian's docker.io (the
# Docker lease sandbox; its dockerd, containerd and runc: the Docker tests start a private
# engine, never the machine's own), slirp4netns (Internet egress for leases that book it).
# Installed only when one is missing; without root only a warning (the tests that need them
# skip, saying why).
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
mesh_packages=()
for pair in wireguard-go:wireguard-go wg:wireguard-tools ip:iproute2 iptables:iptables \
            ping:iputils-ping iperf3:iperf3 bwrap:bubblewrap gocryptfs:gocryptfs \
            fusermount3:fuse3 dockerd:docker.io slirp4netns:slirp4netns; do
  have "${pair%%:*}" || mesh_packages+=("${pair#*:}")
done
if [ ${#mesh_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt_install "${mesh_packages[@]}"
  else
    echo "bootstrap: the mesh needs: apt-get install ${mesh_packages[*]} (as root)" >&2
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import gpupool, fastapi, sqlalchemy, psycopg' # fail loudly if the install did not take
