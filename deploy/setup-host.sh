#!/usr/bin/env bash
# Prepare this Debian host for zapfarm: packages, services, .venv, guest image.
# Idempotent: each step checks first and does nothing when already done.
#
#   deploy/setup-host.sh demo      what `make demo` needs (libvirt, QEMU, Redis, kernel)
#   deploy/setup-host.sh test      the same plus PostgreSQL and the dev tools
#   deploy/setup-host.sh control   a control host: PostgreSQL, Redis, scheduler and web units
#   deploy/setup-host.sh worker    a worker host: libvirt, QEMU, kernel, worker unit (no database)
#
# control and worker write /etc/zapfarm/farm.env (from deploy/farm.env.example, only the
# blocks of their role) when it is missing, and install the systemd units when systemd runs.
# ZAPFARM_ETC overrides /etc/zapfarm (tests). See deploy/README.md.
set -euo pipefail
role=${1:-demo}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
etc=${ZAPFARM_ETC:-/etc/zapfarm}
say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { (cd / && as_root runuser -u postgres -- "$@"); }

# kmod (depmod -b) and zstd: the zram modules of fetched Debian kernels (farm/artifacts/modules.py)
pkgs_worker="qemu-system-x86 libvirt-daemon-system libvirt-dev pkg-config gcc libc6-dev \
busybox-static cpio gzip kmod zstd linux-image-amd64 python3 python3-venv python3-dev libnuma-dev"
pkgs_demo="$pkgs_worker redis-server"
pkgs_build="make flex bison bc patch xz-utils perl libelf-dev linux-source-6.1"
pkgs_test="$pkgs_demo postgresql chromium $pkgs_build"
# the control plane needs no hypervisor; libvirt-dev, pkg-config and gcc build libvirt-python
pkgs_control="postgresql redis-server libvirt-dev pkg-config gcc libc6-dev python3 python3-venv \
python3-dev openssl"
case "$role" in
  worker) want=$pkgs_worker ;;
  demo) want=$pkgs_demo ;;
  test) want=$pkgs_test ;;
  control) want=$pkgs_control ;;
  *) echo "usage: $0 demo|test|control|worker" >&2; exit 2 ;;
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
if [ "$role" != control ] && ! virsh -c qemu:///system version >/dev/null 2>&1; then
  say "starting virtlogd and libvirtd"
  pgrep -x virtlogd >/dev/null || as_root virtlogd -d
  pgrep -x libvirtd >/dev/null || as_root libvirtd -d
  for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh -c qemu:///system version >/dev/null || { echo "libvirtd did not come up: see journalctl or run libvirtd in the foreground" >&2; exit 1; }
fi

if [ "$role" = test ] || [ "$role" = control ]; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis on 127.0.0.1:6379"
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  fi
fi

# libvirt's per-domain logs pile up forever: a tmpfiles rule ages them out (deploy/README.md).
if [ "$role" != control ]; then
  deploy/libvirt-logs.sh
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

# /etc/zapfarm/farm.env for a control or worker host: the [all] block and the role's block.
write_env() {
  local env=$etc/farm.env
  [ -f "$env" ] && { say "keeping $env"; return; }
  local redis_pw=${ZAPFARM_REDIS_PASSWORD:-} db_pw
  db_pw=$(openssl rand -hex 16)
  [ -n "$redis_pw" ] || [ "$role" != control ] || redis_pw=$(openssl rand -hex 16)
  say "writing $env (role $role)"
  as_root mkdir -p "$etc"
  awk -v role="$role" '
    /^# \[all\]/ {keep=1} /^# \[control\]/ {keep=(role=="control")} /^# \[worker\]/ {keep=(role=="worker")}
    NR<5 || keep' deploy/farm.env.example \
    | sed -e "s/DB_PASSWORD/$db_pw/" -e "s/REDIS_PASSWORD/${redis_pw:-REDIS_PASSWORD}/" \
      -e "$([ "$role" = control ] && echo 's/@10\.0\.0\.10:/@127.0.0.1:/')" \
    | as_root tee "$env" >/dev/null
  as_root chmod 600 "$env"
  if [ "$role" = worker ] && [ -z "$redis_pw" ]; then
    echo "    edit $env: the control host's address and Redis password (from its farm.env)"
  fi
}

# systemd units, with /opt/zapfarm rewritten to this checkout; skipped without systemd.
install_units() {
  if [ ! -d /run/systemd/system ]; then
    say "no systemd here: units not installed (run the commands of deploy/README.md by hand)"
    return
  fi
  local unit
  for unit in "$@"; do
    sed "s|/opt/zapfarm|$top|g" "deploy/systemd/$unit" | as_root tee "/etc/systemd/system/$unit" >/dev/null
  done
  as_root systemctl daemon-reload
}

if [ "$role" = control ]; then
  write_env
  # shellcheck disable=SC1091
  set -a; . <(as_root cat "$etc/farm.env"); set +a
  db_pw=$(sed -n 's|^FARM_DATABASE_URL=postgresql+psycopg://zapfarm:\([^@]*\)@.*|\1|p' <(as_root cat "$etc/farm.env"))
  if ! as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='zapfarm'" | grep -q 1; then
    say "creating the PostgreSQL role and database zapfarm"
    as_postgres psql -qc "CREATE ROLE zapfarm LOGIN PASSWORD '$db_pw'"
  fi
  if ! as_postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname='zapfarm'" | grep -q 1; then
    as_postgres createdb -O zapfarm zapfarm
  fi
  # The broker must keep its messages over a restart (append-only file), and workers on
  # other hosts authenticate with the password of farm.env (the only secret they hold).
  redis_pw=$(sed -n 's|^FARM_BROKER_URL=redis://:\([^@]*\)@.*|\1|p' <(as_root cat "$etc/farm.env"))
  rcli=(redis-cli -h 127.0.0.1 -p 6379 --no-auth-warning)
  if [ -n "$redis_pw" ] && [ "$("${rcli[@]}" ping 2>/dev/null)" = PONG ]; then
    say "Redis: requiring the password of $etc/farm.env"
    "${rcli[@]}" CONFIG SET requirepass "$redis_pw" >/dev/null
  fi
  [ -n "$redis_pw" ] && rcli+=(-a "$redis_pw")
  if [ "$("${rcli[@]}" CONFIG GET appendonly | tail -1)" != yes ]; then
    say "Redis: append-only file on (appendfsync everysec)"
    "${rcli[@]}" CONFIG SET appendonly yes >/dev/null
    "${rcli[@]}" CONFIG SET appendfsync everysec >/dev/null
  fi
  "${rcli[@]}" CONFIG REWRITE >/dev/null 2>&1 || echo "    Redis runs without a config file: its password and AOF last until it restarts"
  .venv/bin/farm db upgrade
  install_units zapfarm-scheduler.service zapfarm-web.service
  if [ -d /run/systemd/system ]; then
    as_root systemctl enable --now zapfarm-scheduler.service zapfarm-web.service
  fi
  echo "    next: bind Redis to the LAN with its password (deploy/README.md, 'Control host')"
  exit 0
fi

if [ "$role" = worker ]; then
  write_env
  # The worker runs as this user, in the group libvirt (deploy/systemd/zapfarm-worker@.service).
  if ! id zapfarm >/dev/null 2>&1; then
    say "creating the system user zapfarm (group libvirt) for the worker"
    as_root useradd --system --user-group --home-dir /var/lib/zapfarm --no-create-home \
      --shell /usr/sbin/nologin zapfarm
  fi
  id -nG zapfarm | grep -qw libvirt || as_root usermod -aG libvirt zapfarm
  install_units zapfarm-worker@.service
  if [ -d /run/systemd/system ]; then
    echo "    start it: systemctl enable --now zapfarm-worker@all.service"
  fi
fi

# The guest image: cached by content, so this is instant when nothing changed.
.venv/bin/farm guest build

if [ "$role" = test ]; then
  # Kernel sources of the other series, for the test that the patches still apply
  # (cached after the first download).
  .venv/bin/farm kernels source 5.10 >/dev/null
  .venv/bin/farm kernels source 6.12 >/dev/null
fi
