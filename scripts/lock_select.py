"""Entries of requirements.lock: a part of the locked set for an image, or a check that the lock covers pyproject.

    python scripts/lock_select.py [--lock FILE] --only NAME...       the entries of these packages
    python scripts/lock_select.py [--lock FILE] --exclude NAME...    every entry but these
    python scripts/lock_select.py [--lock FILE] --roots FILE...      the dependency closure of the packages that
                                                                     FILE lists (a requirements file, or a
                                                                     pyproject.toml: its [project].dependencies)
    python scripts/lock_select.py [--lock FILE] --diff FREEZE        how a `pip freeze` differs from the lock
    python scripts/lock_select.py [--lock FILE] --check pyproject.toml [--extra dev]
                                                                     exit 1 naming every dependency the lock lacks
                                                                     or pins outside its range (needs `packaging`)

Selections print the requirement and ``--hash`` lines of each entry (no comments), ready for
``pip install --require-hashes --no-deps -r -``. The closure follows the ``# via`` annotations that
``uv pip compile`` writes (scripts/lock.sh): an entry belongs to it when a root names it or when an entry
of the closure requires it. Standard library only (``--check`` excepted), for Python 3.10+: the images
run it before anything is installed, bootstrap before ``tomllib`` is certain to exist.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    """One package of the lock: its pin, hash lines, and the packages that require it (``via``)."""

    name: str
    version: str
    lines: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)

    def requirement_text(self) -> str:
        return "\n".join(self.lines) + "\n"


def parse_lock(text: str) -> dict[str, Entry]:
    """The lock's entries by normalized name."""
    entries: dict[str, Entry] = {}
    current: Entry | None = None
    in_via = False
    for line in text.splitlines():
        pin = _PIN.match(line)
        if pin:
            current = entries[normalize(pin.group(1))] = Entry(normalize(pin.group(1)), pin.group(2), [line])
            in_via = False
        elif current is None:
            continue
        elif line.lstrip().startswith("--hash="):
            current.lines.append(line)
        elif line.strip().startswith("# via"):
            rest = line.strip()[len("# via"):].strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif in_via and line.strip().startswith("#   "):
            current.via.add(line.strip()[4:].strip())
        else:
            in_via = False
    for entry in entries.values():  # the last hash line of an entry must not end with a continuation
        entry.lines[-1] = entry.lines[-1].rstrip(" \\")
    return entries


def requirement_name(spec: str) -> str | None:
    """The distribution name of a requirement line (None for blank lines, comments and options)."""
    spec = spec.split("#", 1)[0].strip()
    if not spec or spec.startswith("-"):
        return None
    found = _NAME.match(spec)
    return normalize(found.group(1)) if found else None


def read_roots(path: Path) -> list[str]:
    """The requirement lines a roots file names: a requirements file, or pyproject's [project].dependencies."""
    if path.name == "pyproject.toml":
        import tomllib

        return list(tomllib.loads(path.read_text())["project"]["dependencies"])
    return [line for line in path.read_text().splitlines() if requirement_name(line)]


def closure(entries: dict[str, Entry], roots: list[str]) -> set[str]:
    """The names of the roots and of every entry an entry of the closure requires (per ``# via``)."""
    chosen = {name for name in (requirement_name(r) for r in roots) if name}
    missing = sorted(chosen - entries.keys())
    if missing:
        raise SystemExit(f"not in the lock: {', '.join(missing)} -- run `make lock`")
    grew = True
    while grew:
        grew = False
        for name, entry in entries.items():
            if name not in chosen and any(normalize(parent) in chosen for parent in entry.via):
                chosen.add(name)
                grew = True
    return chosen


def coverage_problems(entries: dict[str, Entry], pyproject: Path, extras: list[str]) -> list[str]:
    """What pyproject.toml asks for that the lock does not pin within range (marker-excluded ones skipped)."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())
    wanted = list(project["project"]["dependencies"]) + list(project.get("build-system", {}).get("requires", []))
    for extra in extras:
        wanted += project["project"]["optional-dependencies"][extra]
    problems = []
    for spec in wanted:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        entry = entries.get(normalize(req.name))
        if entry is None:
            problems.append(f"{spec}: not in the lock")
        elif not req.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{spec}: the lock pins {entry.version}")
    return problems


def differences(entries: dict[str, Entry], freeze: str) -> list[str]:
    """One line per package whose version in a ``pip freeze`` output differs from the lock, or that only one has."""
    installed = {normalize(m.group(1)): m.group(2) for m in map(_PIN.match, freeze.splitlines()) if m}
    out = []
    for name in sorted(installed.keys() | entries.keys()):
        locked = entries[name].version if name in entries else "-"
        if installed.get(name, "-") != locked:
            out.append(f"{name:32} {locked:>20} -> {installed.get(name, '-')}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, default=LOCK)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--only", nargs="+", metavar="NAME")
    how.add_argument("--exclude", nargs="+", metavar="NAME")
    how.add_argument("--roots", nargs="+", type=Path, metavar="FILE")
    how.add_argument("--check", type=Path, metavar="PYPROJECT")
    how.add_argument("--diff", type=Path, metavar="FREEZE")
    parser.add_argument("--extra", action="append", default=[], help="with --check: an optional-dependency group")
    args = parser.parse_args(argv)
    entries = parse_lock(args.lock.read_text())
    if args.check:
        problems = coverage_problems(entries, args.check, args.extra)
        for problem in problems:
            print(f"{args.lock.name} is out of date with {args.check.name}: {problem}", file=sys.stderr)
        if problems:
            print("run `make lock` (scripts/lock.sh) and commit requirements.lock", file=sys.stderr)
        return 1 if problems else 0
    if args.diff:
        lines = differences(entries, args.diff.read_text())
        print(f"{len(lines)} packages differ from {args.lock.name} (locked -> installed):")
        print("\n".join(lines))
        return 0
    if args.only:
        names = {normalize(n) for n in args.only}
        missing = sorted(names - entries.keys())
        if missing:
            raise SystemExit(f"not in the lock: {', '.join(missing)} -- run `make lock`")
    elif args.exclude:
        names = entries.keys() - {normalize(n) for n in args.exclude}
    else:
        names = closure(entries, [line for path in args.roots for line in read_roots(path)])
    sys.stdout.write("".join(entries[name].requirement_text() for name in sorted(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
