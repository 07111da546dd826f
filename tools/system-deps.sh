#!/usr/bin/env bash
# Install the system packages tcp-teardown needs when they are missing (Debian/Ubuntu).
set -euo pipefail
need=()
command -v tshark >/dev/null 2>&1 || need+=(tshark)
if [ "$(id -u)" = 0 ]; then
  # The real-traffic tests build network namespaces: they need these, and run as root.
  command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
fi
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
