"""The verdict of a ``pip-audit -f json`` run (used by scripts/audit.sh; no network, no imports of the project).

    python scripts/audit_verdict.py REPORT.json IGNORE_FILE [PIP_AUDIT_RC] [STDERR_FILE]

Exit status and the line it prints last:

* 0 ``AUDITED: no known vulnerabilities ...`` (ignored ones are listed with their reasons);
* 1 ``FAILED: N known vulnerabilities ...``: a vulnerability not in the ignore file;
* 0 ``NOT AUDITED: vulnerability service unreachable ...``: no report, or not one dependency could be
  looked up (pip-audit then says "No known vulnerabilities found" and exits 0: that is not a pass);
* 2 the ignore file is malformed (an id without a reason).

The ignore file has one ``ID  reason`` per line (a PYSEC/GHSA/CVE id, or an alias of one), ``#``
comments; every id needs a reason.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDITED, FAILED, NOT_AUDITED, BAD_IGNORE = "AUDITED", "FAILED", "NOT AUDITED", "BAD IGNORE FILE"
EXIT = {AUDITED: 0, NOT_AUDITED: 0, FAILED: 1, BAD_IGNORE: 2}


@dataclass
class Verdict:
    status: str
    lines: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT[self.status]


def parse_ignores(text: str) -> tuple[dict[str, str], list[str]]:
    """``{id: reason}`` and the lines that lack a reason."""
    ignores: dict[str, str] = {}
    bad: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            bad.append(raw.strip())
        else:
            ignores[parts[0].upper()] = parts[1].strip()
    return ignores, bad


def verdict(report: dict[str, Any] | None, ignores: dict[str, str], why_no_report: str = "") -> Verdict:
    if report is None:
        return Verdict(NOT_AUDITED, [f"NOT AUDITED: vulnerability service unreachable ({why_no_report or 'no report'})"
                                     " -- this is not a pass; audit where PyPI/OSV is reachable"])
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = [d for d in deps if not d.get("skip_reason")]
    lines: list[str] = []
    findings: list[str] = []
    for dep in audited:
        for vuln in dep.get("vulns", []):
            ids = [vuln["id"], *vuln.get("aliases", [])]
            fix = ", ".join(vuln.get("fix_versions", [])) or "none"
            where = f"{dep['name']} {dep.get('version', '?')}: {' / '.join(ids)} (fixed in: {fix})"
            reason = next((ignores[i.upper()] for i in ids if i.upper() in ignores), None)
            if reason is None:
                findings.append(where)
            else:
                lines.append(f"ignored {where} -- {reason}")
    if not audited:
        sample = skipped[0]["skip_reason"] if skipped else "no dependencies listed"
        return Verdict(NOT_AUDITED, [f"NOT AUDITED: vulnerability service unreachable: 0 of {len(deps)} dependencies "
                                     f"could be looked up (e.g. '{sample}') -- this is not a pass; audit where "
                                     "PyPI/OSV is reachable"])
    if skipped:
        lines.append(f"not audited ({len(skipped)}): " + ", ".join(d["name"] for d in skipped))
    if findings:
        return Verdict(FAILED, [*lines, *(f"VULNERABLE {f}" for f in findings),
                                f"FAILED: {len(findings)} known vulnerabilities not in the ignore file"])
    return Verdict(AUDITED, [*lines, f"AUDITED: no known vulnerabilities in {len(audited)} dependencies"
                                     f"{f' ({len(skipped)} could not be looked up)' if skipped else ''}"])


def main(argv: list[str]) -> int:
    report_path, ignore_path = Path(argv[1]), Path(argv[2])
    rc = argv[3] if len(argv) > 3 else "?"
    stderr = Path(argv[4]).read_text(errors="replace").strip() if len(argv) > 4 and Path(argv[4]).exists() else ""
    ignores, bad = parse_ignores(ignore_path.read_text() if ignore_path.exists() else "")
    if bad:
        print(f"{BAD_IGNORE}: {ignore_path}: every id needs a reason: {bad}")
        return EXIT[BAD_IGNORE]
    report: dict[str, Any] | None = None
    why = ""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        last = stderr.splitlines()[-1] if stderr else ""
        why = "timed out" if rc == "124" else f"pip-audit exit {rc}: {last[:300]}"
    result = verdict(report, ignores, why)
    for line in result.lines:
        print(line)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
