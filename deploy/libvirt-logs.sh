#!/usr/bin/env bash
# Install the tmpfiles rule that ages out libvirt's per-domain logs (deploy/README.md,
# "libvirt's per-domain logs"): every guest boot leaves /var/log/libvirt/qemu/<domain>.log
# and libvirt never deletes them. Idempotent. ZAPFARM_TMPFILES_D overrides /etc/tmpfiles.d.
set -euo pipefail
dir=${ZAPFARM_TMPFILES_D:-/etc/tmpfiles.d}
rule='e /var/log/libvirt/qemu - - - 7d'
conf=$dir/zapfarm.conf
if [ -f "$conf" ] && grep -qxF "$rule" "$conf"; then
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root mkdir -p "$dir"
printf '# zapfarm: libvirt keeps a log per guest boot forever; keep a week of them\n%s\n' "$rule" \
  | as_root tee "$conf" >/dev/null
echo "==> installed $conf (libvirt guest logs older than 7 days are deleted)"
