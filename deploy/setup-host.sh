#!/usr/bin/env bash
# Prepare this Debian host for zapfarm: packages, services, .venv, guest image.
# Idempotent: each step checks first and does nothing when already done.
#
#   deploy/setup-host.sh demo     what `make demo` needs (libvirt, QEMU, Redis, kernel)
#   deploy/setup-host.sh test     the same plus PostgreSQL and the dev tools
#   deploy/setup-host.sh worker   a worker host: libvirt, QEMU, kernel (no database)
set -euo pipefail
role=${1:-demo}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs_worker="qemu-system-x86 libvirt-daemon-system libvirt-dev pkg-config gcc libc6-dev \
busybox-static cpio gzip linux-image-amd64 python3 python3-venv python3-dev"
pkgs_demo="$pkgs_worker redis-server"
pkgs_build="make flex bison bc patch xz-utils perl libelf-dev linux-source-6.1"
pkgs_test="$pkgs_demo postgresql chromium $pkgs_build"
case "$role" in
  worker) want=$pkgs_worker ;;
  demo) want=$pkgs_demo ;;
  test) want=$pkgs_test ;;
  *) echo "usage: $0 demo|test|worker" >&2; exit 2 ;;
esac

missing=()
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirt: no systemd in containers and CI, so start the daemons directly when they are not up.
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  say "starting virtlogd and libvirtd"
  pgrep -x virtlogd >/dev/null || as_root virtlogd -d
  pgrep -x libvirtd >/dev/null || as_root libvirtd -d
  for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh -c qemu:///system version >/dev/null || { echo "libvirtd did not come up: see journalctl or run libvirtd in the foreground" >&2; exit 1; }
fi

if [ "$role" = test ]; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis on 127.0.0.1:6379"
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  fi
fi

# The Python environment, reinstalled when pyproject.toml changes.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.zapfarm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing zapfarm into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

# The guest image: cached by content, so this is instant when nothing changed.
.venv/bin/farm guest build

if [ "$role" = test ]; then
  # Kernel sources of the other series, for the test that the patches still apply
  # (cached after the first download).
  .venv/bin/farm kernels source 5.10 >/dev/null
  .venv/bin/farm kernels source 6.12 >/dev/null
fi
