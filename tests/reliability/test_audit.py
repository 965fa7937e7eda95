"""The verdict of scripts/audit.sh on pip-audit reports: findings fail, ignored ones need a reason,
an unreachable vulnerability service is "NOT AUDITED" (never a pass, never a red build)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "audit_verdict.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_verdict", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_verdict"] = module
    spec.loader.exec_module(module)
    return module


av = load()

UNREACHABLE = {"dependencies": [
    {"name": "flask", "skip_reason": "Dependency not found on PyPI and could not be audited: flask (3.1.0)"},
    {"name": "redis", "skip_reason": "Dependency not found on PyPI and could not be audited: redis (5.2.0)"},
], "fixes": []}
CLEAN = {"dependencies": [{"name": "flask", "version": "3.1.0", "vulns": []},
                          {"name": "redis", "version": "5.2.0", "vulns": []}], "fixes": []}
VULN = {"id": "PYSEC-2099-1", "fix_versions": ["9.9"], "aliases": ["CVE-2099-0001"], "description": "bad"}
VULNERABLE = {"dependencies": [{"name": "flask", "version": "3.1.0", "vulns": [VULN]},
                               {"name": "redis", "version": "5.2.0", "vulns": []}], "fixes": []}


def test_an_unreachable_service_is_not_audited_and_not_a_failure() -> None:
    v = av.verdict(UNREACHABLE, {})
    assert v.status == av.NOT_AUDITED and v.exit_code == 0
    assert v.lines[-1].startswith("NOT AUDITED: vulnerability service unreachable")
    no_report = av.verdict(None, {}, "timed out")
    assert no_report.status == av.NOT_AUDITED and "timed out" in no_report.lines[-1]


def test_clean_and_vulnerable_reports() -> None:
    assert av.verdict(CLEAN, {}).exit_code == 0
    v = av.verdict(VULNERABLE, {})
    assert v.status == av.FAILED and v.exit_code == 1
    assert any("VULNERABLE flask 3.1.0: PYSEC-2099-1 / CVE-2099-0001 (fixed in: 9.9)" in line for line in v.lines)


@pytest.mark.parametrize("listed", ["PYSEC-2099-1", "cve-2099-0001"])
def test_an_ignored_vulnerability_passes_with_its_reason(listed: str) -> None:
    ignores, bad = av.parse_ignores(f"# comment\n{listed}  not reachable: we never call flask.bad()\n")
    assert not bad
    v = av.verdict(VULNERABLE, ignores)
    assert v.status == av.AUDITED
    assert any("ignored flask" in line and "we never call flask.bad()" in line for line in v.lines)


def test_partly_audited_reports_what_was_skipped() -> None:
    mixed = {"dependencies": [*CLEAN["dependencies"], UNREACHABLE["dependencies"][0] | {"name": "odd"}]}
    v = av.verdict(mixed, {})
    assert v.status == av.AUDITED and "not audited (1): odd" in v.lines


def run(tmp_path: Path, report: dict[str, Any] | None, ignore: str, rc: str = "0") -> subprocess.CompletedProcess[str]:
    (tmp_path / "report.json").write_text(json.dumps(report) if report is not None else "")
    (tmp_path / "ignore").write_text(ignore)
    (tmp_path / "stderr").write_text("ConnectionError: no route\n")
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "report.json"), str(tmp_path / "ignore"), rc,
                           str(tmp_path / "stderr")], capture_output=True, text=True, timeout=60)


def test_the_script_exit_codes(tmp_path: Path) -> None:
    assert run(tmp_path, VULNERABLE, "").returncode == 1
    assert run(tmp_path, VULNERABLE, "PYSEC-2099-1 accepted risk: dev tool only\n").returncode == 0
    bad = run(tmp_path, VULNERABLE, "PYSEC-2099-1\n")
    assert bad.returncode == 2 and "needs a reason" in bad.stdout
    down = run(tmp_path, None, "", rc="1")
    assert down.returncode == 0 and "NOT AUDITED" in down.stdout and "no route" in down.stdout
    assert "timed out" in run(tmp_path, None, "", rc="124").stdout


def test_the_repository_ignore_file_is_well_formed() -> None:
    _, bad = av.parse_ignores((REPO / "scripts" / "audit-ignore.txt").read_text())
    assert not bad
