"""Audit mae-hub's runtime dependencies, as installed, against the Python Packaging
Advisory Database (PyPI's vulnerability records), with pip-audit.

    .venv/bin/python scripts/audit.py            # the runtime set: mae-hub[onnx]
    .venv/bin/python scripts/audit.py --json FILE

The set audited is what a serving install holds: the package's own dependencies and the
onnx extra, followed through the installed distributions' metadata to the exact versions
in this environment (the test and plot extras are left out: they are not in the image).
Known advisories that do not apply to how mae-hub uses a package are listed in
KNOWN below, each with the reason; anything else fails the audit (exit 1). Exit 3: some
packages could not be audited (the advisory service unreachable, or a registry mirror
without PyPI's JSON API): the audit is incomplete, and says so rather than "clean".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "mae-hub"
EXTRAS = ("onnx",)

# advisory id -> why it does not apply to mae-hub (keep short; remove when fixed upstream)
KNOWN: dict[str, str] = {}


def runtime_set(root: str = ROOT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """name -> installed version of `root`'s dependencies with `extras`, transitively."""
    found: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, want = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (*want, "")
            ):
                continue
            key = canonicalize_name(req.name)
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency of a dependency, not installed
            sub = tuple(sorted(req.extras))
            if key not in found or sub:
                found[key] = version
                todo.append((req.name, sub))
    found.pop(canonicalize_name(root), None)
    return dict(sorted(found.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the findings here as JSON")
    args = parser.parse_args()
    pins = runtime_set()
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "runtime.txt"
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
        cmd = [sys.executable, "-m", "pip_audit", "--disable-pip", "--no-deps", "-r", str(reqs)]
        run = subprocess.run(
            [*cmd, "--format", "json", "--progress-spinner", "off"], capture_output=True, text=True
        )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(
            f"audit: pip-audit gave no report (exit {run.returncode}):\n{run.stderr.strip()}",
            file=sys.stderr,
        )
        return 3
    deps = report.get("dependencies", [])
    skipped = {d["name"]: d["skip_reason"] for d in deps if d.get("skip_reason")}
    findings = [
        {
            "package": d["name"],
            "version": d["version"],
            "id": v["id"],
            "aliases": v.get("aliases", []),
            "fix_versions": v.get("fix_versions", []),
            "known": KNOWN.get(v["id"]),
        }
        for d in deps
        for v in d.get("vulns", [])
    ]
    new = [f for f in findings if not f["known"]]
    audited = len(deps) - len(skipped)
    print(
        f"audit: {len(pins)} runtime packages, {audited} audited, {len(findings)} advisories "
        f"({len(findings) - len(new)} known and not applicable, {len(new)} new)"
    )
    for f in findings:
        fix = ", ".join(f["fix_versions"]) or "none yet"
        status = f"known: {f['known']}" if f["known"] else "NEW"
        print(f"  {f['package']} {f['version']}: {f['id']} (fixed in {fix}) - {status}")
    if args.json:
        args.json.write_text(
            json.dumps({"packages": pins, "findings": findings, "skipped": skipped}, indent=2)
        )
    if skipped:
        # A package the advisory service does not know is a package not checked: never
        # reported as clean. (Behind a registry mirror without PyPI's JSON API, all are.)
        first = next(iter(skipped.values()))
        print(
            f"audit: INCOMPLETE: {len(skipped)} of {len(deps)} packages could not be audited "
            f"(e.g. {first}); is PyPI's JSON API reachable (pypi.org/pypi/<name>/<version>/json)?",
            file=sys.stderr,
        )
        return 1 if new else 3
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
