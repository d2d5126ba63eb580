#!/usr/bin/env bash
# What only a CUDA machine can check, as one script: the test suite on CUDA (runs use train.device=auto, so they
# land on the GPU), a 2-epoch AMP distillation on the embedded set, and one timed CCTV KD epoch (when the CCTV
# data is there). Prints a table and writes benchmarks/results/gpu_check.csv (or $OUT/gpu_check.csv).
#
#   bash benchmarks/gpu_check.sh                   # uses `python` if it imports cvkd + CUDA torch, else builds .venv-gpu
#   CCTV=/path/to/cctv_people bash benchmarks/gpu_check.sh
#
# Each step has a time limit (STEP_TIMEOUT, default 420 s) so a hang cannot eat a short GPU lease; a failed step is
# reported in the table and the script exits 1 at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
export YOLO_OFFLINE=1
OUT_DIR="${OUT:-benchmarks/results}"
CCTV="${CCTV:-../shared/datasets/cctv_people}"
STEP_TIMEOUT="${STEP_TIMEOUT:-420}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu only to dry-run this script's logic on a machine without a GPU
WORK="$(mktemp -d)"
mkdir -p "$OUT_DIR"

PY="${PY:-python}"
if ! "$PY" -c "import cvkd, torch; assert '$DEVICE' == 'cpu' or torch.cuda.is_available()" 2>/dev/null; then
  echo "setting up .venv-gpu (torch from constraints.txt)"
  python3 -m venv .venv-gpu && .venv-gpu/bin/python -m pip install -q -U pip \
    && .venv-gpu/bin/python -m pip install -q -c constraints.txt -e ".[dev]" || { echo "install failed"; exit 1; }
  PY=.venv-gpu/bin/python
fi
if [ "$DEVICE" != cpu ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" || exit 1
fi

rows=()  # step|status|seconds|result
run_step() {  # name, result-extractor (a command reading the step's log on stdin), command...
  local name="$1" extract="$2"; shift 2
  local log="$WORK/$name.log" t0 rc status result
  t0=$(date +%s%N)
  timeout "$STEP_TIMEOUT" "$@" > "$log" 2>&1; rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local secs="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
  if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ]; then status="timeout (${STEP_TIMEOUT}s)"; else status="FAILED rc=$rc"; fi
  result=$(eval "$extract" < "$log" | tail -1)
  [ $rc -ne 0 ] && { echo "--- $name: last lines of its log"; tail -15 "$log"; }
  rows+=("$name|$status|$secs|$result")
}

# 1. the whole test suite, with CUDA visible
run_step cuda_tests "grep -E '[0-9]+ passed' | sed 's/=//g'" "$PY" -m pytest -q -p no:cacheprovider -x tests

# 2. two epochs of AMP distillation on the embedded set (configs/demo.yaml: shipped teacher, all_joint_ws recipe)
run_step amp_distill_2ep "grep -oE 'map=[0-9.]+ ap50=[0-9.]+' " "$PY" tools/distill.py -c configs/demo.yaml \
  train.epochs=2 train.eval_every=1 data.close_mosaic=1 train.amp=true train.device="$DEVICE" name=gpu_amp out="$WORK/runs"

# 3. one timed KD epoch on the CCTV set at imgsz 320 (the cctv_distill.yaml recipe), if the data is on this machine
if [ -f "$CCTV/data.yaml" ]; then
  "$PY" tools/convert.py yolo "$CCTV" --out "$WORK/cctv" > "$WORK/convert.log" 2>&1
  run_step cctv_kd_epoch "grep -oE 'map=[0-9.]+ ap50=[0-9.]+'" "$PY" tools/distill.py -c configs/cctv_distill.yaml \
    kd.teacher=checkpoints/cctv_yolov8s_320_e218_fp16.pt.xz kd.teacher_classes='{"0": person, "1": person}' train.epochs=1 train.amp=true train.device="$DEVICE" \
    data.train_json="$WORK/cctv/train.json" data.train_images="$CCTV/train/images" \
    data.val_json="$WORK/cctv/val.json" data.val_images="$CCTV/valid/images" data.workers=8 \
    name=gpu_cctv out="$WORK/runs"
else
  rows+=("cctv_kd_epoch|skipped (no $CCTV/data.yaml; set CCTV=)|0|")
fi

csv="$OUT_DIR/gpu_check.csv"
echo "step,status,seconds,result" > "$csv"
printf "\n%-16s %-34s %8s  %s\n" step status seconds result
failed=0
for r in "${rows[@]}"; do
  IFS='|' read -r name status secs result <<< "$r"
  printf "%-16s %-34s %8s  %s\n" "$name" "$status" "$secs" "$result"
  echo "$name,\"$status\",$secs,\"$result\"" >> "$csv"
  case "$status" in ok|skipped*) ;; *) failed=1 ;; esac
done
echo "wrote $csv"
exit $failed
