"""The vGPU panel with 200 kernels and leases in the pool, measured in Chromium (issue 14).

    python benchmarks/panel_render.py [--kernels N] [--json PATH]

Runs the browser test tests/ui/test_panel_scale.py (two host workers, a real JupyterLab, N real
kernels and 200 - N real leases; the server's principal is the workers' admin) and reports its
figures: page start -> the panel listing every kernel and lease, tab click -> shown with every chart
drawn, and frame times, renders and long tasks (> 50 ms) while the samples stream for 10 s.
Information only (no target in shared/design/BASELINES.md). Needs /usr/bin/chromium and Playwright;
without them the figure is recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = REPO / "tests" / "ui" / "test_panel_scale.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, default=6,
                        help="how many of the 200 are real kernels (default 6; 100 takes ~80 s on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()
    if not 0 < args.kernels <= 200:
        parser.error(f"--kernels {args.kernels}: give 1 to 200 (the rest of the 200 are leases)")
    if not Path("/usr/bin/chromium").exists():
        data: dict[str, object] = {"skipped": "needs Debian's Chromium at /usr/bin/chromium"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            env = {**os.environ, "TF_PANEL_SCALE_KERNELS": str(args.kernels), "TF_PANEL_SCALE_OUT": str(out)}
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(TEST)],
                                 cwd=REPO, env=env, timeout=900)
            if run.returncode != 0 or not out.exists():
                print(f"panel_render: the browser test failed (exit {run.returncode})", file=sys.stderr)
                return 1
            data = json.loads(out.read_text(encoding="utf-8"))
    print(json.dumps(data, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
