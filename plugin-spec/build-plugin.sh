#!/usr/bin/env bash
# Builds the managed-plugin directory (config.json + rootfs/) and creates the plugin:
#   plugin-spec/build-plugin.sh [NAME]   → docker plugin create NAME; docker plugin enable NAME:latest
# The rootfs holds a statically linked cnibridge and the iptables tools it calls, so no image
# registry is needed. Mount sources must exist on the host before `enable`; they default to
# /var/lib/cnibridge, /var/lib/cni/networks and /etc/cni/net.d, or come from
# CNIBRIDGE_STATE_SOURCE, CNIBRIDGE_CNI_DATA_SOURCE and CNIBRIDGE_CNI_CONF_SOURCE.
set -euo pipefail
name=${1:-cnibridge}
state_source=${CNIBRIDGE_STATE_SOURCE:-/var/lib/cnibridge}
data_source=${CNIBRIDGE_CNI_DATA_SOURCE:-/var/lib/cni/networks}
conf_source=${CNIBRIDGE_CNI_CONF_SOURCE:-/etc/cni/net.d}
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu --manifest-path "$top/Cargo.toml"
mkdir -p "$out/rootfs/run/docker/plugins" "$out/rootfs/var/lib/cnibridge" "$out/rootfs/var/lib/cni/networks" \
  "$out/rootfs/etc/cni/net.d" "$out/rootfs/tmp"
cp "${CARGO_TARGET_DIR:-$top/target}/x86_64-unknown-linux-gnu/release/cnibridge" "$out/rootfs/cnibridge"
# iptables-restore and its libraries, copied with their dependencies.
for bin in /usr/sbin/xtables-nft-multi; do
  [ -x "$bin" ] || continue
  mkdir -p "$out/rootfs/usr/sbin"
  cp "$bin" "$out/rootfs/usr/sbin/"
  for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
    ln -sf xtables-nft-multi "$out/rootfs/usr/sbin/$t"
  done
  ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
    if [ -f "$lib" ]; then install -D "$lib" "$out/rootfs$lib"; fi
  done
done
# Matches and targets (comment, conntrack, MASQUERADE, …) are loaded at run time from here.
for ext in /usr/lib/*/xtables /usr/lib/xtables; do
  [ -d "$ext" ] || continue
  mkdir -p "$out/rootfs$ext"
  cp -a "$ext/." "$out/rootfs$ext/"
  for so in "$ext"/*.so; do
    ldd "$so" | awk '/=>/ {print $3}' | while read -r lib; do
      if [ -f "$lib" ] && [ ! -e "$out/rootfs$lib" ]; then install -D "$lib" "$out/rootfs$lib"; fi
    done
  done
done
cp "$top/plugin-spec/config.json" "$out/config.json"
mkdir -p "$state_source" "$data_source" "$conf_source"
touch /run/xtables.lock
docker plugin create "$name" "$out"
docker plugin set "$name" state.source="$state_source" cni-data.source="$data_source" \
  cni-conf.source="$conf_source"
echo "created $name:latest; enable it with: docker plugin enable $name:latest"
