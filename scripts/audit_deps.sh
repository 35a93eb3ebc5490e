#!/usr/bin/env bash
# Dependency audit: pip-audit over requirements.txt and everything installed in .venv (the
# runtime pins, their dependencies and the dev tools), against PyPI's advisory data.
#
# Exit 1 on any known vulnerability, or if pip-audit itself fails. Exit 0 with the line
# "vulnerability data unreachable" in exactly one situation: no advisory data could be fetched
# (PyPI's per-release JSON answered "not found" for every package, or the service could not be
# reached at all before AUDIT_TIMEOUT). That is the case on machines whose network reaches the
# package indexes only: pypi.org/simple and /pypi/<name>/json answer, but
# /pypi/<name>/<version>/json (where pip-audit reads advisories) is 404 and api.osv.dev does not
# resolve. Anywhere with the data, the audit is real and gates.
#
# Usage: scripts/audit_deps.sh   (AUDIT_TIMEOUT=seconds, default 120; VENV=.venv)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
AUDIT_TIMEOUT="${AUDIT_TIMEOUT:-120}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$VENV/bin/python" -m pip freeze --exclude-editable | grep -v -e '^-e ' -e ' @ ' > "$work/installed.txt"
timeout "$AUDIT_TIMEOUT" "$VENV/bin/pip-audit" --progress-spinner off --no-deps --disable-pip --timeout 15 \
  -r requirements.txt -r "$work/installed.txt" -f json -o "$work/report.json" 2> "$work/stderr.txt"
status=$?

exec "$VENV/bin/python" - "$status" "$work/report.json" "$work/stderr.txt" <<'PY'
import json
import sys
from pathlib import Path

status, report, stderr = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]).read_text()
UNREACHABLE = "pip-audit: vulnerability data unreachable ({}); dependencies NOT audited. Not failing CI for this."
NETWORK_ERRORS = ("ConnectionError", "NameResolutionError", "Max retries exceeded", "ConnectTimeout", "ReadTimeout")

if status == 124:
    print(UNREACHABLE.format("no answer within AUDIT_TIMEOUT"))
    sys.exit(0)
if not report.is_file() or not report.read_text().strip():
    if any(marker in stderr for marker in NETWORK_ERRORS):
        print(UNREACHABLE.format(stderr.strip().splitlines()[-1][:200]))
        sys.exit(0)
    print(f"pip-audit failed (exit {status}):\n{stderr}", file=sys.stderr)
    sys.exit(1)

dependencies = json.loads(report.read_text())["dependencies"]
vulnerable = [d for d in dependencies if d.get("vulns")]
skipped = [d for d in dependencies if d.get("skip_reason")]
audited = len(dependencies) - len(skipped)
for dep in vulnerable:
    for vuln in dep["vulns"]:
        fixes = ", ".join(vuln.get("fix_versions") or []) or "no fix yet"
        print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})")
if vulnerable:
    sys.exit(1)
if status != 0:
    print(f"pip-audit failed (exit {status}):\n{stderr}", file=sys.stderr)
    sys.exit(1)
if dependencies and audited == 0 and all("not found on PyPI" in d["skip_reason"] for d in skipped):
    print(UNREACHABLE.format(f"PyPI had no release data for any of {len(skipped)} packages"))
    sys.exit(0)
for dep in skipped:
    print(f"not audited: {dep['name']}: {dep['skip_reason']}")
print(f"pip-audit: {audited} packages audited, no known vulnerabilities.")
PY
