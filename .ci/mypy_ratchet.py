"""The mypy ratchet of ``tox -e type``: mypy's error count in dsv/ may only go down.

The allowed count is in .ci/mypy-baseline (one integer). More errors fail with mypy's report;
fewer pass and say to lower the baseline to the new count in the same change."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BASELINE = Path(__file__).with_name("mypy-baseline")


def main() -> int:
    allowed = int(BASELINE.read_text().split()[0])
    done = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True)
    report = done.stdout + done.stderr
    errors = len(re.findall(r"^\S+:\d+: error:", report, flags=re.M))
    if done.returncode not in (0, 1) or (done.returncode == 1 and errors == 0):
        print(report)
        print(f"mypy failed to run (exit {done.returncode})")
        return 2
    if errors > allowed:
        print(report)
        print(f"mypy: {errors} errors, the baseline allows {allowed}: fix the new ones")
        return 1
    note = f"; lower {BASELINE.relative_to(Path.cwd())} to {errors}" if errors < allowed else ""
    print(f"mypy: {errors} errors (baseline {allowed}){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
