#!/usr/bin/env bash
# Dependency audit of the locked set (requirements.lock, or the pinned requirements file given) with
# pip-audit (issues 12, 25): the lock's versions are looked up as they are, nothing is installed or resolved.
#   exit 1: a known vulnerability that scripts/audit-ignore.txt does not list with a reason;
#   exit 0 + "NOT AUDITED: vulnerability service unreachable": PyPI's JSON API / OSV could not be reached
#           (or answered for no dependency) -- loudly not a pass, but the network never fails a build;
#   exit 0 + "AUDITED: ...": every dependency looked up, nothing unaddressed.
# AUDIT_TIMEOUT_S (default 90) bounds the whole run; AUDIT_SERVICE=pypi|osv (default pypi); VENV (default
# .venv) is where pip-audit is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
PINNED=${1:-requirements.lock}
IGNORE=scripts/audit-ignore.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  echo "NOT AUDITED: pip-audit is not installed in ${VENV:-.venv} (bash scripts/bootstrap.sh installs the dev extra)"
  exit 0
fi
# A local version label (torch's "+cpu") names a build, not a release: vulnerabilities are filed per release.
sed -E 's/^([A-Za-z0-9._-]+==[^+ ;]+)\+[A-Za-z0-9.]+/\1/' "$PINNED" >"$tmp/pinned.txt"
timeout "${AUDIT_TIMEOUT_S:-90}" "$PY" -m pip_audit -r "$tmp/pinned.txt" --disable-pip --no-deps \
  --progress-spinner off --format json --vulnerability-service "${AUDIT_SERVICE:-pypi}" --timeout 10 \
  >"$tmp/report.json" 2>"$tmp/stderr"
rc=$?
echo "pip-audit of $PINNED (${AUDIT_SERVICE:-pypi}, exit $rc):"
"$PY" scripts/audit_verdict.py "$tmp/report.json" "$IGNORE" "$rc" "$tmp/stderr"
