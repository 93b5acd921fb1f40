# Shared by the prepared GPU scripts (sourced, not run): the output and scratch folders, the environment, and
# `step NAME SECONDS COMMAND...`, which runs one command with its own time limit into $W/logs/NAME.log and goes on
# whatever it returns.
OUT=${OUT:-/tmp/gpu-out}
W=${WORK:-/tmp/mb-work}
mkdir -p "$OUT" "$W/logs"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MEDBACKDOOR_CACHE=$W/cache
PY=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s, at ${SECONDS}s)"
  timeout "$limit" "$@" >"$W/logs/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 3 "$W/logs/$name.log"
}
