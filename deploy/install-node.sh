#!/usr/bin/env bash
# Installs a sharenet provider node as a systemd service, idempotently:
#   sudo deploy/install-node.sh --coordinator /ip4/203.0.113.7/udp/4000/quic-v1/p2p/12D3KooW... \
#       [--binary target/release/sharenet-node]
# Creates the `sharenet` system user, installs the binary to
# /usr/local/bin, writes /var/lib/sharenet-node/node.toml with
# `sharenet-node init` (kept if it exists), and enables the service. Edit
# node.toml's [[models]] (and prices), then `systemctl restart sharenet-node`.
set -euo pipefail

coordinator=""
binary="target/release/sharenet-node"
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) coordinator="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
[ -x "$binary" ] || { echo "no node binary at $binary: cargo build --release -p sharenet-node" >&2; exit 1; }
[ -n "$coordinator" ] || { echo "--coordinator /.../p2p/<peer id> is required" >&2; exit 2; }

here="$(cd "$(dirname "$0")" && pwd)"
id sharenet >/dev/null 2>&1 || useradd --system --home-dir /var/lib/sharenet-node --shell /usr/sbin/nologin sharenet
install -m 0755 "$binary" /usr/local/bin/sharenet-node
install -d -m 0700 -o sharenet -g sharenet /var/lib/sharenet-node
if [ ! -f /var/lib/sharenet-node/node.toml ]; then
  runuser -u sharenet -- /usr/local/bin/sharenet-node init --dir /var/lib/sharenet-node --coordinator "$coordinator"
fi
install -m 0644 "$here/systemd/sharenet-node.service" /etc/systemd/system/sharenet-node.service
systemctl daemon-reload
systemctl enable sharenet-node.service
echo "installed: edit /var/lib/sharenet-node/node.toml ([[models]], prices), then: systemctl start sharenet-node"
echo "check it:  sharenet-node status --config /var/lib/sharenet-node/node.toml   (or curl 127.0.0.1:9470/status)"
