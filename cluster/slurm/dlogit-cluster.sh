# shellcheck shell=bash
# dlogit-cluster.sh -- the command lines of the dlogit SLURM recipe, sourced by
# dlogit-train.sbatch (and by tests/test_integration_cluster.py, which runs the very
# same argument arrays on loopback).  Source it; do not execute it.
#
# Every knob is an environment variable with a default; nothing here needs SLURM
# except dlogit_start_workers, which launches the workers through `srun`.
#
#   DLOGIT_DASK                 dask CLI                          [dask]
#   DLOGIT_DLOGIT               dlogit CLI                        [dlogit]
#   DLOGIT_PYTHON               python with distributed installed [python]
#   DLOGIT_WORKER_KIND          cuda (dask cuda worker) | cpu     [cuda]
#   DLOGIT_SCHEDULER_HOST       address the scheduler binds       [unset: dask decides]
#   DLOGIT_WORKER_HOST          address the workers bind          [unset: dask decides]
#   DLOGIT_INTERFACE            network interface (e.g. ib0) for scheduler and workers
#   DLOGIT_SCHEDULER_PORT       scheduler port, 0 = random (the scheduler file says which) [0]
#   DLOGIT_DASHBOARD_ADDRESS    scheduler dashboard               [:8787]
#   DLOGIT_WORKER_DASHBOARD_ADDRESS  worker dashboards            [unset: dask default]
#   DLOGIT_PRELOAD              scheduler preload (dashboard panel /dlogit) [dlogit.dashboard]
#   DLOGIT_NTHREADS             threads per worker process        [1]
#   DLOGIT_NWORKERS             worker processes per node (cpu kind only; cuda: one per GPU) [1]
#   DLOGIT_MEMORY_LIMIT         host memory per worker process    [auto]
#   DLOGIT_RMM_POOL_SIZE        RMM pool per GPU worker, e.g. 30GB (cuda kind only) [unset]
#   DLOGIT_LOCAL_DIRECTORY      worker spill/scratch directory    [${TMPDIR:-/tmp}]
#   DLOGIT_DEATH_TIMEOUT        seconds a worker waits for a lost scheduler [120]
#   DLOGIT_TLS_CA_FILE, DLOGIT_TLS_CERT, DLOGIT_TLS_KEY
#                               PEM files; when all three are set every process speaks tls://
#
# Functions (each sets a global bash array named after it, in upper case):
#   dlogit_scheduler_cmd SCHED_FILE         -> DLOGIT_SCHEDULER_CMD
#   dlogit_worker_cmd    SCHED_FILE         -> DLOGIT_WORKER_CMD
#   dlogit_srun_args                        -> DLOGIT_SRUN_ARGS
#   dlogit_train_cmd     SCHED_FILE [ARG..] -> DLOGIT_TRAIN_CMD
#   dlogit_print_cmd scheduler|worker|train SCHED_FILE [ARG..]   NUL-separated argv on stdout
#   dlogit_start_scheduler SCHED_FILE, dlogit_start_workers SCHED_FILE   (background; pids kept)
#   dlogit_wait_for_file FILE SECONDS, dlogit_wait_for_workers SCHED_FILE N SECONDS
#   dlogit_expected_workers, dlogit_cleanup

DLOGIT_PIDS=()

_dlogit_tls_enabled() {
    [[ -n "${DLOGIT_TLS_CA_FILE:-}" && -n "${DLOGIT_TLS_CERT:-}" && -n "${DLOGIT_TLS_KEY:-}" ]]
}

_dlogit_check_tls() {
    # all three or none: a half-configured TLS set-up must not silently fall back to tcp
    if [[ -n "${DLOGIT_TLS_CA_FILE:-}${DLOGIT_TLS_CERT:-}${DLOGIT_TLS_KEY:-}" ]] && ! _dlogit_tls_enabled; then
        echo "dlogit-cluster: set all of DLOGIT_TLS_CA_FILE, DLOGIT_TLS_CERT, DLOGIT_TLS_KEY or none" >&2
        return 2
    fi
}

_dlogit_tls_args() {
    _DLOGIT_TLS=()
    if _dlogit_tls_enabled; then
        _DLOGIT_TLS=(--tls-ca-file "$DLOGIT_TLS_CA_FILE" --tls-cert "$DLOGIT_TLS_CERT" --tls-key "$DLOGIT_TLS_KEY")
    fi
}

dlogit_scheduler_cmd() {
    local sched_file="$1"
    _dlogit_check_tls || return
    _dlogit_tls_args
    DLOGIT_SCHEDULER_CMD=("${DLOGIT_DASK:-dask}" scheduler
        --scheduler-file "$sched_file"
        --port "${DLOGIT_SCHEDULER_PORT:-0}"
        --dashboard-address "${DLOGIT_DASHBOARD_ADDRESS:-:8787}")
    if [[ -n "${DLOGIT_PRELOAD-dlogit.dashboard}" ]]; then
        DLOGIT_SCHEDULER_CMD+=(--preload "${DLOGIT_PRELOAD-dlogit.dashboard}")
    fi
    if [[ -n "${DLOGIT_SCHEDULER_HOST:-}" ]]; then
        DLOGIT_SCHEDULER_CMD+=(--host "$DLOGIT_SCHEDULER_HOST")
    elif [[ -n "${DLOGIT_INTERFACE:-}" ]]; then
        DLOGIT_SCHEDULER_CMD+=(--interface "$DLOGIT_INTERFACE")
    fi
    if _dlogit_tls_enabled; then
        DLOGIT_SCHEDULER_CMD+=(--protocol tls "${_DLOGIT_TLS[@]}")
    fi
}

dlogit_worker_cmd() {
    local sched_file="$1"
    _dlogit_check_tls || return
    _dlogit_tls_args
    case "${DLOGIT_WORKER_KIND:-cuda}" in
        cuda)
            # dask-cuda starts one worker process per visible GPU
            DLOGIT_WORKER_CMD=("${DLOGIT_DASK:-dask}" cuda worker)
            ;;
        cpu)
            DLOGIT_WORKER_CMD=("${DLOGIT_DASK:-dask}" worker --nworkers "${DLOGIT_NWORKERS:-1}")
            ;;
        *)
            echo "dlogit-cluster: DLOGIT_WORKER_KIND must be cuda or cpu, not '${DLOGIT_WORKER_KIND}'" >&2
            return 2
            ;;
    esac
    DLOGIT_WORKER_CMD+=(--scheduler-file "$sched_file"
        --nthreads "${DLOGIT_NTHREADS:-1}"
        --preload dlogit.worker
        --memory-limit "${DLOGIT_MEMORY_LIMIT:-auto}"
        --local-directory "${DLOGIT_LOCAL_DIRECTORY:-${TMPDIR:-/tmp}}"
        --death-timeout "${DLOGIT_DEATH_TIMEOUT:-120}")
    if [[ "${DLOGIT_WORKER_KIND:-cuda}" == cuda && -n "${DLOGIT_RMM_POOL_SIZE:-}" ]]; then
        DLOGIT_WORKER_CMD+=(--rmm-pool-size "$DLOGIT_RMM_POOL_SIZE")
    fi
    if [[ -n "${DLOGIT_WORKER_HOST:-}" ]]; then
        DLOGIT_WORKER_CMD+=(--host "$DLOGIT_WORKER_HOST")
    elif [[ -n "${DLOGIT_INTERFACE:-}" ]]; then
        DLOGIT_WORKER_CMD+=(--interface "$DLOGIT_INTERFACE")
    fi
    if [[ -n "${DLOGIT_WORKER_DASHBOARD_ADDRESS:-}" ]]; then
        DLOGIT_WORKER_CMD+=(--dashboard-address "$DLOGIT_WORKER_DASHBOARD_ADDRESS")
    fi
    DLOGIT_WORKER_CMD+=("${_DLOGIT_TLS[@]}")
}

dlogit_srun_args() {
    # one task per node; dask cuda worker then forks one worker per GPU of that node
    DLOGIT_SRUN_ARGS=(--nodes "${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node 1 --kill-on-bad-exit=0)
}

dlogit_train_cmd() {
    local sched_file="$1"
    shift
    _dlogit_check_tls || return
    _dlogit_tls_args
    DLOGIT_TRAIN_CMD=("${DLOGIT_DLOGIT:-dlogit}" train "$@"
        --scheduler-file "$sched_file"
        --connect-timeout "${DLOGIT_CONNECT_TIMEOUT:-60}"
        "${_DLOGIT_TLS[@]}")
}

dlogit_print_cmd() {
    local which="$1"
    shift
    local -a argv
    case "$which" in
        scheduler) dlogit_scheduler_cmd "$@" || return; argv=("${DLOGIT_SCHEDULER_CMD[@]}") ;;
        worker) dlogit_worker_cmd "$@" || return; argv=("${DLOGIT_WORKER_CMD[@]}") ;;
        train) dlogit_train_cmd "$@" || return; argv=("${DLOGIT_TRAIN_CMD[@]}") ;;
        srun) dlogit_srun_args || return; argv=("${DLOGIT_SRUN_ARGS[@]}") ;;
        *) echo "dlogit_print_cmd: unknown command '$which'" >&2; return 2 ;;
    esac
    printf '%s\0' "${argv[@]}"
}

dlogit_expected_workers() {
    local nodes="${SLURM_JOB_NUM_NODES:-1}"
    if [[ "${DLOGIT_WORKER_KIND:-cuda}" == cuda ]]; then
        echo $((nodes * ${SLURM_GPUS_ON_NODE:-1}))
    else
        echo $((nodes * ${DLOGIT_NWORKERS:-1}))
    fi
}

dlogit_start_scheduler() {
    local sched_file="$1"
    # a stale file from an earlier job would send the workers to a dead scheduler
    rm -f -- "$sched_file"
    dlogit_scheduler_cmd "$sched_file" || return
    "${DLOGIT_SCHEDULER_CMD[@]}" &
    DLOGIT_PIDS+=("$!")
}

dlogit_start_workers() {
    local sched_file="$1"
    dlogit_worker_cmd "$sched_file" || return
    dlogit_srun_args
    srun "${DLOGIT_SRUN_ARGS[@]}" "${DLOGIT_WORKER_CMD[@]}" &
    DLOGIT_PIDS+=("$!")
}

dlogit_wait_for_file() {
    local file="$1" seconds="$2" waited=0
    until [[ -s "$file" ]]; do
        if ((waited >= seconds * 10)); then
            echo "dlogit-cluster: $file did not appear within ${seconds}s" >&2
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

dlogit_wait_for_workers() {
    local sched_file="$1" n="$2" seconds="$3"
    "${DLOGIT_PYTHON:-python}" - "$sched_file" "$n" "$seconds" <<'PY'
import os
import sys

from distributed import Client, Security

sched_file, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
security = None
if os.environ.get("DLOGIT_TLS_CA_FILE"):
    security = Security(
        tls_ca_file=os.environ["DLOGIT_TLS_CA_FILE"],
        tls_client_cert=os.environ["DLOGIT_TLS_CERT"],
        tls_client_key=os.environ["DLOGIT_TLS_KEY"],
        require_encryption=True,
    )
try:
    with Client(scheduler_file=sched_file, security=security, timeout=seconds) as client:
        client.wait_for_workers(n, timeout=seconds)
        print(f"dlogit-cluster: {len(client.scheduler_info(n_workers=-1)['workers'])} workers "
              f"at {client.scheduler.address}", file=sys.stderr)
except Exception as exc:  # one line, not a traceback, in the job log
    sys.exit(f"dlogit-cluster: fewer than {n} workers after {seconds:g}s: {exc}")
PY
}

dlogit_cleanup() {
    local pid i
    ((${#DLOGIT_PIDS[@]})) || return 0
    for pid in "${DLOGIT_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # give nannies/srun up to 10 s to stop their workers, then insist
    for ((i = 0; i < 100; i++)); do
        local alive=0
        for pid in "${DLOGIT_PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${DLOGIT_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    DLOGIT_PIDS=()
}
