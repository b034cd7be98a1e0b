#!/usr/bin/env bash
# Make podman usable on this kind of machine (run as root; idempotent).
# crun fails on this cgroup layout, so podman uses runc with the cgroupfs manager; the default
# ulimits are lowered because the container runtime cannot raise them here.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "podman-setup: run as root" >&2
    exit 1
fi

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

mkdir -p /etc/containers
conf=/etc/containers/containers.conf
want='[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
'
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$(printf '%s' "$want")" ]; then
    [ -f "$conf" ] && cp "$conf" "$conf.kiln-backup"
    printf '%s' "$want" > "$conf.tmp"
    mv "$conf.tmp" "$conf"
    echo "podman-setup: wrote $conf"
fi
podman --version
