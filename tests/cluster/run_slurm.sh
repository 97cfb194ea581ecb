#!/usr/bin/env bash
# A real one-node SLURM cluster (Debian's slurm-wlm + munge, no slurmdbd, no systemd) runs the
# digits workflow (tests/configs/tiny.yaml) through profiles/slurm; the test passes when every job
# ran as a SLURM job and pareto.csv equals a local run's (latency and paths aside).
#
#   sudo tests/cluster/run_slurm.sh        # root: it installs packages and starts daemons
#
# Everything it starts lives in a private state folder (/tmp/natv2-slurm-XXXXXX: its own munge
# socket, its own ports, its own slurm.conf through SLURM_CONF), so it does not meet another
# cluster on the machine; the daemons are stopped by their pid files on any exit.
# Prints `slurm: 1 passed, 0 failed` (exit 0) or `slurm: 0 passed, 1 failed` (exit 1).
# Env: NATV2_SLURM_KEEP=1 keeps the state folder; NATV2_SLURM_TIMEOUT (seconds, default 1800)
# bounds each workflow run.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/tests/cluster"
RUN_TIMEOUT=${NATV2_SLURM_TIMEOUT:-1800}
# The executor polls after this many seconds; slurm.conf keeps MinJobAge well above 3x that,
# or the executor silently prefers sacct, which fails without accounting (and it then waits forever).
INIT_SECONDS=2
MIN_JOB_AGE=300

say() { echo "slurm: $*"; }
fail() { echo "slurm: FAILED: $*" >&2; echo "slurm: 0 passed, 1 failed"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (installs slurm-wlm/munge and starts their daemons)"
command -v snakemake >/dev/null || fail "snakemake is not on PATH (activate the venv first)"

# ---- packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    timeout -k 10 300 apt-get update -qq || fail "apt-get update"
    DEBIAN_FRONTEND=noninteractive timeout -k 10 600 apt-get install -y -qq slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge"
fi
[ -s /etc/munge/munge.key ] || fail "/etc/munge/munge.key is missing (the munge package writes it)"

# ---- state folder and clean-up ----------------------------------------------------------------
STATE=$(mktemp -d /tmp/natv2-slurm-XXXXXX)
chmod 755 "$STATE"
mkdir -p "$STATE"/{etc,log,ctld,slurmd,munge}
chown munge:munge "$STATE/munge"
chmod 755 "$STATE/munge"  # munged wants the socket folder searchable by all

stop_pidfile() {  # stop the daemon whose pid file is $1 (TERM, then KILL after 10 s)
    local pidfile=$1 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    # cancel what is left of our jobs before the daemons go (only this cluster's: SLURM_CONF is ours)
    # the workflow runs (their `timeout` passes TERM on to snakemake), then what is left of our
    # jobs (this cluster's only: SLURM_CONF is ours), before the daemons go: slurmd leaves
    # running jobs alive when it stops
    for pid in ${LOCAL_PID:-} ${SLURM_PID:-}; do kill -TERM "$pid" 2>/dev/null || true; done
    if [ -s "$STATE/slurmctld.pid" ]; then
        timeout 10 scancel --user=root 2>/dev/null || true
        timeout 30 bash -c 'while [ -n "$(squeue -h -t running,completing,pending 2>/dev/null)" ]; do sleep 0.5; done' || true
    fi
    stop_pidfile "$STATE/slurmd.pid"
    stop_pidfile "$STATE/slurmctld.pid"
    stop_pidfile "$STATE/munge/munged.pid"
    if [ "$rc" -ne 0 ]; then
        for f in "$STATE"/log/slurmctld.log "$STATE"/log/slurmd.log; do
            [ -f "$f" ] && { echo "---- tail $f" >&2; tail -n 20 "$f" >&2; }
        done
    fi
    if [ "${NATV2_SLURM_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        echo "slurm: state kept in $STATE" >&2
    else
        rm -rf "$STATE"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- munge: our own socket, started as user munge ---------------------------------------------
runuser -u munge -- munged --socket="$STATE/munge/munge.socket" --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed" || fail "munged did not start"
timeout 10 bash -c "until [ -S '$STATE/munge/munge.socket' ]; do sleep 0.1; done" || fail "no munge socket"
timeout 10 munge -S "$STATE/munge/munge.socket" -n | timeout 10 unmunge -S "$STATE/munge/munge.socket" >/dev/null \
    || fail "munge round trip"

# ---- slurm.conf -------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
HOST=$(hostname -s)
NODE=$(slurmd -C | head -n 1)   # NodeName=<host> CPUs=... RealMemory=...
case "$NODE" in NodeName=*) ;; *) fail "slurmd -C gave no node line: $NODE" ;; esac
# The node advertises at least what one profiles/slurm job asks for (cpus_per_task 8, mem_mb
# 16000) and four GPUs (GRES without device files): the profile is submitted unchanged, and the
# tiny jobs use 1-2 threads whatever they are granted (natv2 --threads). config_overrides makes
# slurmd report these values instead of the hardware's.
NODE=$(python3 - "$NODE" <<'EOF'
import sys
fields = dict(item.split("=", 1) for item in sys.argv[1].split())
cpus = max(int(fields["CPUs"]), 16)
fields.update(CPUs=cpus, Boards=1, SocketsPerBoard=1, CoresPerSocket=cpus, ThreadsPerCore=1,
              RealMemory=max(int(fields.get("RealMemory", 0)), 32000))
fields.pop("UpTime", None)
print(" ".join(f"{k}={v}" for k, v in fields.items()))
EOF
)
NODENAME=${NODE%% *}; NODENAME=${NODENAME#NodeName=}
export SLURM_CONF="$STATE/etc/slurm.conf"
sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@NODE@|$NODE|g" -e "s|@NODENAME@|$NODENAME|g" \
    -e "s|@CTLD_PORT@|$(free_port)|g" -e "s|@SLURMD_PORT@|$(free_port)|g" -e "s|@MIN_JOB_AGE@|$MIN_JOB_AGE|g" \
    "$HERE/slurm.conf.in" > "$SLURM_CONF"
# four "GPUs": plain files standing in for device files (task/none constrains no device)
mkdir -p "$STATE/dev" && touch "$STATE"/dev/nvidia{0,1,2,3}
printf 'NodeName=%s Name=gpu File=%s/dev/nvidia[0-3]\n' "$NODENAME" "$STATE" > "$STATE/etc/gres.conf"

# The executor's job runs each rule through `srun` from snakemake's slurm-jobstep plugin, which
# drops every SLURM_* variable (SLURM_CONF included) from srun's environment; srun then looks for
# /etc/slurm/slurm.conf or DNS records. An `srun` first on PATH (which jobs inherit) puts our
# slurm.conf back, so nothing machine-wide is written. (A real cluster keeps its slurm.conf at the
# default path or runs configless, and needs none of this.)
mkdir -p "$STATE/bin"
printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$(command -v srun)" > "$STATE/bin/srun"
chmod 755 "$STATE/bin/srun"
export PATH="$STATE/bin:$PATH"

# ---- daemons ----------------------------------------------------------------------------------
slurmctld -i -f "$SLURM_CONF" || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" -N "$NODENAME" || fail "slurmd did not start"
say "daemons up (state $STATE); waiting for the node"
timeout 60 bash -c 'until sinfo -h -N -o "%T" 2>/dev/null | grep -qx idle; do sleep 0.5; done' \
    || { sinfo -N -l || true; fail "the node did not become idle within 60 s"; }

# a job that runs a step, as the executor's jobs do, before the workflow's
timeout -k 5 60 sbatch --wait --quiet -o "$STATE/log/smoke.out" --wrap 'srun true && echo ok' \
    && grep -qx ok "$STATE/log/smoke.out" \
    || { cat "$STATE/log/smoke.out" >&2 || true; fail "a 'srun true' batch job did not succeed"; }

# ---- the workflow, twice: through profiles/slurm and locally ----------------------------------
make_workdir() {
    mkdir -p "$1"
    cp -r "$REPO"/Snakefile "$REPO"/workflow "$REPO"/config "$REPO"/profiles "$REPO"/natv2 "$1"/
    cp "$REPO/tests/configs/tiny.yaml" "$1/tiny.yaml"
    cp "$HERE/cluster.yaml" "$1/cluster.yaml"
    find "$1" -name __pycache__ -prune -exec rm -rf {} +
}
TARGET=results/digits/pareto.csv
make_workdir "$STATE/slurm-run"
make_workdir "$STATE/local-run"

# The local run goes alongside the SLURM run (they share nothing but the CPUs).
t0=$(date +%s)
say "workflow through profiles/slurm, and locally alongside"
(cd "$STATE/local-run" && PYTHONPATH="$STATE/local-run" exec timeout -k 30 "$RUN_TIMEOUT" snakemake \
    --cores 2 "$TARGET" --configfile tiny.yaml cluster.yaml > "$STATE/log/snakemake-local.log" 2>&1) &
LOCAL_PID=$!
(cd "$STATE/slurm-run" && PYTHONPATH="$STATE/slurm-run" exec timeout -k 30 "$RUN_TIMEOUT" snakemake \
    --profile profiles/slurm "$TARGET" --configfile tiny.yaml cluster.yaml \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks "$INIT_SECONDS" \
    --seconds-between-status-checks 1 --slurm-keep-successful-logs --latency-wait 5 \
    > "$STATE/log/snakemake-slurm.log" 2>&1) &
SLURM_PID=$!
# waited for in the background, so a TERM reaches the trap at once
wait "$SLURM_PID" || { tail -n 40 "$STATE/log/snakemake-slurm.log" >&2; fail "the SLURM run failed or timed out"; }
SLURM_PID=
say "SLURM run took $(($(date +%s) - t0)) s"
wait "$LOCAL_PID" || { tail -n 40 "$STATE/log/snakemake-local.log" >&2; fail "the local run failed or timed out"; }
LOCAL_PID=
say "local run done after $(($(date +%s) - t0)) s"

# ---- checks -----------------------------------------------------------------------------------
python3 "$HERE/check_slurm_run.py" --slurm-run "$STATE/slurm-run" --local-run "$STATE/local-run" \
    --jobcomp "$STATE/log/jobcomp.txt" --snakemake-log "$STATE/log/snakemake-slurm.log" --target "$TARGET" \
    || fail "checks"
say "1 passed, 0 failed"
