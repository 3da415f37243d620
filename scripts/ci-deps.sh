#!/usr/bin/env bash
# Installs the real programs the test suite runs against, when missing:
# redis-server and redis-cli (limiter, cluster and fault tests), nginx (proxy
# layer test), promtool and amtool (alert rule and routing tests), wrk (the
# benchmark script's run). Debian/Ubuntu, as root.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: bash scripts/ci-deps.sh [-h]
Installs redis-server, redis-tools, nginx, prometheus (promtool), prometheus-alertmanager
(amtool), curl, openssl, shellcheck, iproute2, util-linux (unshare, nsenter),
git, wrk and time (GNU time) with apt-get when their binaries are missing. Does nothing when everything is present.
USAGE
}
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v ss >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v git >/dev/null 2>&1 || need+=(git)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ -x /usr/bin/time ] || need+=(time)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ci-deps: missing ${need[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "ci-deps: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "ci-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d keeps the packages from starting system services (port 80,
# 6379, 9090) during the install; the tests start their own instances.
# Debian and Ubuntu container images ship their own policy-rc.d: it is set
# aside and put back afterwards, and ours removed. A copy already set aside
# (a run that was killed) is the original and is kept.
policy=/usr/sbin/policy-rc.d
saved="$policy.ci-deps-saved"
restore_policy() {
  $sudo rm -f "$policy"
  if [ -e "$saved" ] || [ -L "$saved" ]; then
    $sudo mv -f "$saved" "$policy"
  fi
}
if { [ -e "$policy" ] || [ -L "$policy" ]; } && ! { [ -e "$saved" ] || [ -L "$saved" ]; }; then
  $sudo mv -f "$policy" "$saved"
fi
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
$sudo chmod +x "$policy"
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The prometheus package (installed for promtool) enables its server for the
# next boot, on :9090, the service's admin port. Off, and masked so nothing
# starts it; without systemd there is nothing to start it.
if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable prometheus.service >/dev/null 2>&1 || true
  $sudo systemctl mask prometheus.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    $sudo systemctl stop prometheus.service >/dev/null 2>&1 || true
  fi
fi
echo "ci-deps: done"
