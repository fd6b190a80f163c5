#!/usr/bin/env bash
# The real-GPU check (issue 13): one call on the GPU machine that installs what it lacks from carried
# wheels, starts a worker with --backend nvml, runs an end-to-end kernel through it and the gpu
# suite (tests/gpu, marker gpu), and writes to $OUT (at most 8 files come back):
#   gpu-check.md   the report: machine, install, end-to-end kernel, one row per test
#   junit.xml      the gpu suite's JUnit XML
#   e2e.md, gpu-check.log, worker.log   the end-to-end section, everything printed, the worker's log
# Everything ends within 8 minutes (DEADLINE_S): each step runs under `timeout` with what is left.
#
# On the device (device tool), after scripts/gpu-wheels.sh here:
#   run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=560)
# Dry run here, everything but the GPU (host backend, gpu tests skip; OUT defaults to /tmp/gpu-check-out):
#   scripts/gpu-check.sh --dry-run
#
# The project is NOT installed from a wheel: the GPU check runs the GPU-host side (tf_remoting) from
# the source tree that travels with the working tree (PYTHONPATH=remoting:.), so it tests exactly the
# tree it was sent with, and needs neither hatch, jupyterlab nor the built JupyterLab extension there.
#
# Carried wheels (.whl/, made by scripts/gpu-wheels.sh; cp312 manylinux x86_64; 30 wheels, 21.7 MiB,
# well under the 64 MiB a call carries with the ~2 MiB tree). Each is installed into /tmp/site only
# where the machine lacks it or has an older version (tests/gpu/check_install.py select):
#   asttokens-3.0.2                         28 KiB
#   comm-0.2.3                               7 KiB
#   debugpy-1.8.22                        5248 KiB
#   executing-2.3.0                         28 KiB
#   grpcio-1.85.3                         7188 KiB
#   grpcio_health_checking-1.85.1           19 KiB
#   ipykernel-7.4.0                        120 KiB
#   ipython-9.18.1                         634 KiB
#   ipython_pygments_lexers-1.1.1            7 KiB
#   jedi-0.20.1                           4771 KiB
#   jupyter_client-8.10.0                  107 KiB
#   jupyter_core-5.9.1                      28 KiB
#   matplotlib_inline-0.2.2                  9 KiB
#   nest_asyncio2-1.7.4                      8 KiB
#   parso-0.8.7                            104 KiB
#   pexpect-4.9.0                           62 KiB
#   platformdirs-4.14.9                     92 KiB
#   pluggy-1.7.0                            26 KiB
#   prompt_toolkit-3.0.53                  383 KiB
#   protobuf-7.36.2                        335 KiB
#   ptyprocess-0.7.0                        13 KiB
#   pure_eval-0.2.4                         11 KiB
#   pytest-9.2.0                           402 KiB
#   pytest_asyncio-1.5.0                    16 KiB
#   pyzmq-27.3.0                           835 KiB
#   stack_data-0.6.3                        23 KiB
#   tornado-6.6.1                          521 KiB
#   traitlets-5.16.1                        84 KiB
#   tzdata-2026.6                          340 KiB
#   wcwidth-0.9.4                          767 KiB
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
DEADLINE_S=${DEADLINE_S:-470}
START=$(date +%s)
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log REPORT=$OUT/gpu-check.md JUNIT=$OUT/junit.xml E2E=$OUT/e2e.md
: >"$LOG"
export PYTHONUNBUFFERED=1
if [ $DRY = 1 ]; then PY=${PYTHON:-$ROOT/.venv/bin/python}; BACKEND=host; else PY=${PYTHON:-python3}; BACKEND=nvml; fi
export PYTHONPATH="$ROOT/remoting:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
say() { echo "$*" | tee -a "$LOG"; }
# step NAME LIMIT_S CMD...: run under timeout (at most what is left), output to the log; returns its status
step() {
    local name=$1 limit=$2; shift 2
    local budget; budget=$(left)
    [ "$budget" -lt "$limit" ] && limit=$budget
    if [ "$limit" -le 5 ]; then say "## $name: skipped, the 8-minute budget is spent"; return 124; fi
    say "## $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    [ $rc = 124 ] && say "   $name: timed out after ${limit} s"
    say "   $name: exit $rc after $(( $(date +%s) - START )) s in all"
    return $rc
}

# ---------------------------------------------------------------- the machine
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    [ $DRY = 1 ] && echo "**DRY RUN** (host backend, no GPU: the gpu tests skip)"
    echo
    echo "## Machine"
    echo
    kernel=$(uname -r)
    case "$kernel" in 4.4.0*) runtime="gVisor";; *fc*) runtime="Firecracker";; *) runtime="unknown";; esac
    echo "- kernel $kernel (runtime: $runtime), $(nproc) CPUs, Python $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,mig.mode.current,compute_mode \
            --format=csv,noheader 2>&1 | sed 's/^/- GPU /'
        echo "- CUDA (nvidia-smi): $(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -1)"
    else
        echo "- no nvidia-smi on PATH"
    fi
} >"$REPORT"

# ---------------------------------------------------------------- install
install_wheels() {
    if [ ! -d .whl ] || ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no carried wheels in .whl/: run scripts/gpu-wheels.sh here and carry .whl"; return 1
    fi
    if [ $DRY = 1 ]; then
        # Prove the carried set installs for cp312 manylinux (no duplicates, nothing broken), without using it.
        local tmp; tmp=$(mktemp -d)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$tmp" --only-binary=:all: \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            --platform manylinux_2_5_x86_64 .whl/*.whl || { rm -rf "$tmp"; return 1; }
        echo "dry run: all $(ls .whl/*.whl | wc -l) wheels install for cp312 manylinux x86_64 (into $tmp, then removed)"
        rm -rf "$tmp"
        "$PY" tests/gpu/check_install.py select .whl >/dev/null
        return 0
    fi
    mapfile -t wanted < <("$PY" tests/gpu/check_install.py select .whl)
    if [ ${#wanted[@]} -gt 0 ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${wanted[@]}" \
            || return 1
    fi
    echo "installed ${#wanted[@]} of $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
}
export -f install_wheels
export DRY PY
if ! step "install" 90 bash -c install_wheels; then
    say "install failed: see gpu-check.log"
    echo -e "\n## Install\n\n**FAILED**: see gpu-check.log\n" >>"$REPORT"
    exit 1
fi
[ $DRY = 0 ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
step "import check" 60 "$PY" tests/gpu/check_install.py verify
verify_rc=$?
{
    echo; echo "## Install"; echo
    grep -E '^(install|keep) ' "$LOG" | sed 's/^/- /'
    grep -E '^versions: ' "$LOG" | tail -1 | sed 's/^/- /'
    [ $verify_rc = 0 ] && echo "- import check: ok" || echo "- import check: **FAILED** (gpu-check.log)"
} >>"$REPORT"
[ $verify_rc = 0 ] || exit 1

# ---------------------------------------------------------------- worker and end-to-end kernel
WORK=$(mktemp -d /tmp/gpuchk-XXXXXX)
TOKEN=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')
echo "alice $TOKEN" >"$WORK/tokens"
"$PY" -m tf_remoting --listen 127.0.0.1:0 --token-file "$WORK/tokens" --state-dir "$WORK/state" \
    --backend "$BACKEND" --sample-interval 0.25 --watchdog-action warn --address-file "$WORK/address" \
    >"$OUT/worker.log" 2>&1 </dev/null &
WORKER=$!
stop_worker() {
    kill -TERM "$WORKER" 2>/dev/null && timeout 15 tail --pid="$WORKER" -f /dev/null
    kill -KILL "$WORKER" 2>/dev/null
    # Kernels and nannies outlive the worker by design: end the ones this worker started.
    for state in "$WORK"/state/kernels/*/state.json; do
        [ -f "$state" ] || continue
        for pid in $("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("kernel_pid") or "", d.get("nanny_pid") or "")' "$state"); do
            kill -KILL "$pid" 2>/dev/null
        done
    done
    rm -rf "$WORK"
}
trap stop_worker EXIT
for _ in $(seq 1 300); do
    [ -s "$WORK/address" ] && break
    kill -0 "$WORKER" 2>/dev/null || break
    sleep 0.1
done
if [ ! -s "$WORK/address" ]; then
    say "the worker (--backend $BACKEND) did not start within 30 s:"; tail -20 "$OUT/worker.log" | tee -a "$LOG"
    echo -e "\n## Worker\n\n**FAILED** to start with --backend $BACKEND:\n\n```\n$(tail -20 "$OUT/worker.log")\n```" >>"$REPORT"
    exit 1
fi
say "worker (--backend $BACKEND) at $(cat "$WORK/address")"
step "end-to-end kernel" 150 "$PY" tests/gpu/e2e_kernel.py --address "$(cat "$WORK/address")" --token "$TOKEN" --report "$E2E"
e2e_rc=$?
{ echo; if [ -f "$E2E" ]; then cat "$E2E"; else echo "## End-to-end kernel: **FAILED**, no report (gpu-check.log)"; fi; } >>"$REPORT"
stop_worker
trap - EXIT

# ---------------------------------------------------------------- the gpu suite
# -p: the worker fixtures without tests/conftest.py (which loads the Jupyter side's plugin too).
step "gpu suite" 400 "$PY" -m pytest -p tf_remoting.pytest_plugin --confcutdir tests/gpu -p no:cacheprovider \
    -m gpu -q -rA --junitxml "$JUNIT" -o junit_family=xunit2 tests/gpu
suite_rc=$?
"$PY" - "$JUNIT" "$suite_rc" >>"$REPORT" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

path, rc = sys.argv[1], sys.argv[2]
print("\n## gpu suite (tests/gpu)\n")
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError) as exc:
    print(f"**no JUnit XML** ({exc}); pytest exit {rc}: see gpu-check.log")
    sys.exit(0)
counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
rows = []
for case in root.iter("testcase"):
    outcome, detail = "passed", ""
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed"}.get(child.tag, child.tag)
            detail = (child.get("message") or child.text or "").strip().splitlines()[0][:200] if (child.get("message") or child.text) else ""
    counts[outcome] += 1
    name = case.get("name", "")
    detail = detail.replace("|", "\\|")
    rows.append(f"| {case.get('classname', '').split('.')[-1]}::{name} | {outcome} | {float(case.get('time', 0)):.1f} | {detail} |")
print(", ".join(f"{n} {k}" for k, n in counts.items()) + f" (pytest exit {rc})\n")
print("| test | result | s | detail |\n| --- | --- | --- | --- |")
print("\n".join(rows))
PYEOF
{
    echo
    total=$(( $(date +%s) - START ))
    if [ $e2e_rc = 0 ] && [ $suite_rc = 0 ]; then verdict=passed; else verdict=FAILED; fi
    echo "**$verdict** in ${total} s (end-to-end exit $e2e_rc, gpu suite exit $suite_rc)"
} >>"$REPORT"
say "report: $REPORT"
cat "$REPORT"
[ $e2e_rc = 0 ] && [ $suite_rc = 0 ]
