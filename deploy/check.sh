#!/usr/bin/env bash
# Checks what this machine can check of deploy/ (run by the test suite,
# tests/tests/e2e/deploy.rs, with a real /metrics page):
#   deploy/check.sh METRICS_FILE
# - the systemd units with `systemd-analyze verify` (ExecStart pointed at
#   an existing binary: the sharenet binaries are not installed here);
# - both Prometheus configs with `promtool check config`;
# - compose.yaml and Grafana's provisioning files parse as YAML;
# - every query of the Grafana dashboard parses as PromQL (`promtool check
#   rules` on a rules file made of them), and every sharenet metric it
#   reads is on the given /metrics page.
# Not checked here (no Docker engine, no Kubernetes): building the images
# and running the compose file; deploy/README.md says so.
set -euo pipefail
cd "$(dirname "$0")"
metrics="${1:?usage: deploy/check.sh METRICS_FILE}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if command -v systemd-analyze >/dev/null; then
  for unit in systemd/*.service; do
    sed 's#^ExecStart=[^ ]*#ExecStart=/bin/true#' "$unit" > "$tmp/$(basename "$unit")"
    out="$(systemd-analyze verify --man=no "$tmp/$(basename "$unit")" 2>&1 || true)"
    if [ -n "$out" ]; then
      echo "systemd-analyze verify $unit:"; echo "$out"; exit 1
    fi
    echo "ok: $unit"
  done
else
  echo "skipped: systemd-analyze is not installed"
fi

for cfg in prometheus/prometheus.yml prometheus/compose.yml; do
  promtool check config "$cfg" >/dev/null
  echo "ok: $cfg"
done

python3 - "$metrics" "$tmp/dashboard.rules.yml" <<'PY'
import json, re, sys
import yaml
for f in ["compose.yaml", "grafana/provisioning/datasources/prometheus.yml",
          "grafana/provisioning/dashboards/sharenet.yml"]:
    yaml.safe_load(open(f))
    print(f"ok: {f}")
dash = json.load(open("grafana/dashboards/sharenet.json"))
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
open(sys.argv[2], "w").write(yaml.safe_dump(rules))
page = open(sys.argv[1]).read()
names = {l.split("{")[0].split(" ")[0] for l in page.splitlines() if l and not l.startswith("#")}
missing = []
for e in exprs:
    for m in re.findall(r"sharenet_[a-z_]+", e):
        if m not in names and not any(n.startswith(m) for n in names):
            missing.append((m, e))
if missing:
    sys.exit(f"dashboard queries read metrics /metrics does not have: {missing}")
print(f"ok: grafana/dashboards/sharenet.json ({len(exprs)} queries, every metric on /metrics)")
PY
promtool check rules "$tmp/dashboard.rules.yml" >/dev/null
echo "ok: the dashboard's queries parse as PromQL"
