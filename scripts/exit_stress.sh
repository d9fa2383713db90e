#!/usr/bin/env bash
# Repeat the CPU tests' two-rank tiny run (tests/test_train.py's world-size check) and count the runs whose process
# exit code is not 0, for each trainer given, alternating between them so that load affects all alike. For faults
# that strike one run in tens, like the SIGABRT at interpreter exit that `os._exit` in train_gpt.py's __main__ ends
# (README, "A multi-process run ends with os._exit(0)").
#   bash scripts/exit_stress.sh RUNS TRAINER...     e.g.  git show HEAD~1:train_gpt.py > /tmp/old.py
#                                                          bash scripts/exit_stress.sh 150 /tmp/old.py train_gpt.py
# A trainer outside the repository is run from a copy beside conf/ (it finds its presets there). Per run it prints
# `run:<i> trainer:<path> rc:<code> final_line:<0|1> abort:<0|1>`, then a summary per trainer; a failed run's stderr
# is kept under $WORK (default a new temporary folder).
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RUNS TRAINER..." >&2; exit 2; }
runs=$1; shift
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "RUNS: '$runs' is not a positive whole number" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || { echo "python $python: not found; 'bash run.sh test' makes .venv, or set PYTHON" >&2; exit 2; }
for t in "$@"; do
  [ -f "$t" ] || { echo "trainer $t: no such file" >&2; exit 2; }
done
WORK=${WORK:-$(mktemp -d)}
# The CPU tests' tiny model and their synthetic corpus, as tests/conftest.py defines them: one override a line.
overrides=$("$python" - "$WORK/data" "$root/tests" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import TINY, build_synthetic_data
print("\n".join(TINY + build_synthetic_data(Path(sys.argv[1]))["overrides"]))
EOF
) || exit 1
mapfile -t overrides <<< "$overrides"
trainers=()
for t in "$@"; do
  copy="$root/.exit_stress_$(basename "$t" .py)_$$.py"  # beside conf/, removed at exit
  cp "$t" "$copy"; trainers+=("$copy")
done
trap 'rm -f "${trainers[@]}"' EXIT
declare -A failed
for i in $(seq 1 "$runs"); do
  for k in "${!trainers[@]}"; do
    log=$WORK/run_$k; rm -rf "$log"; mkdir -p "$log"
    OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 "$python" -m torch.distributed.run --standalone --nproc_per_node=2 \
      "${trainers[$k]}" "${overrides[@]}" train.max_steps=6 train.max_wallclock_seconds=600 train.schedule=steps \
      run.log_dir="$log" run.run_id=r$i > "$log/out.txt" 2> "$log/err.txt"
    rc=$?
    echo "run:$i trainer:${*:$((k + 1)):1} rc:$rc final_line:$(grep -c '^final_bf16_exact' "$log/out.txt")" \
         "abort:$(grep -c 'terminate called' "$log/err.txt")"
    if [ $rc -ne 0 ]; then
      failed[$k]=$(( ${failed[$k]:-0} + 1 )); cp "$log/err.txt" "$WORK/stderr_trainer${k}_run$i.txt"
    fi
  done
done
for k in "${!trainers[@]}"; do
  echo "summary trainer:${*:$((k + 1)):1} runs:$runs failed:${failed[$k]:-0} stderr_of_failures:$WORK"
done
