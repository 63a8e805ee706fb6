#!/usr/bin/env bash
# Checks what this machine can check of deploy/ (run by the test suite,
# tests/tests/e2e/deploy.rs, with a real coordinator's private /metrics
# page, the one its metrics listener serves to Prometheus):
#   deploy/check.sh METRICS_FILE
# - the systemd units with `systemd-analyze verify` (ExecStart pointed at
#   an existing binary: the sharenet binaries are not installed here);
# - both Prometheus configs with `promtool check config`;
# - compose.yaml and Grafana's provisioning files parse as YAML;
# - every query of the Grafana dashboard parses as PromQL (`promtool check
#   rules` on a rules file made of them), and every sharenet metric it
#   reads is on the given /metrics page.
# - the Helm chart: Chart.yaml and values.yaml parse, every `.Values.…`
#   a template reads is in values.yaml, and every template's actions
#   balance (each if/with/range/define has its end).
# Not checked here (no Docker engine, no Kubernetes, no helm binary):
# building the images, running the compose file, `helm lint` and
# `helm template`; deploy/README.md says so.
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
for f in ["compose.yaml", "compose.replicas.yaml", "grafana/provisioning/datasources/prometheus.yml",
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
python3 - <<'PY'
import glob, re, yaml
chart = "helm/sharenet-coordinator"
meta = yaml.safe_load(open(f"{chart}/Chart.yaml"))
assert meta["apiVersion"] == "v2" and meta["name"] and meta["version"], meta
values = yaml.safe_load(open(f"{chart}/values.yaml"))
problems = []
for path in sorted(glob.glob(f"{chart}/templates/*")):
    text = open(path).read()
    for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
        node = values
        for part in ref.strip(".").split("."):
            if not isinstance(node, dict) or part not in node:
                problems.append(f"{path}: .Values{ref} is not in values.yaml")
                break
            node = node[part]
    actions = re.findall(r"\{\{-?\s*(if|with|range|define|end)\b", text)
    depth = 0
    for a in actions:
        depth += -1 if a == "end" else 1
        if depth < 0:
            problems.append(f"{path}: an end without its opening action")
            break
    if depth > 0:
        problems.append(f"{path}: {depth} action(s) without an end")
    if text.count("{{") != text.count("}}"):
        problems.append(f"{path}: unbalanced {{{{ }}}}")
if problems:
    raise SystemExit("\n".join(problems))
print(f"ok: {chart} (Chart.yaml, values.yaml, {len(glob.glob(chart + '/templates/*'))} templates)")
PY
promtool check rules "$tmp/dashboard.rules.yml" >/dev/null
echo "ok: the dashboard's queries parse as PromQL"
