#!/usr/bin/env bash
# Installs the Debian packages that tests use for real (Chromium, PostgreSQL), if missing and if we can.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: missing ${need[*]}; the tests that need them will skip and say why" >&2
  exit 0
fi
echo "system_deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "system_deps: could not install ${need[*]}; dependent tests will skip" >&2
exit 0
