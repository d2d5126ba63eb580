#!/usr/bin/env bash
# The CCTV teacher on a CUDA machine, as one call of the device tool (issue 31: a converged teacher): continues the
# committed teacher for TEACHER_EPOCHS more epochs with ultralytics' own trainer (the recipe of the CPU stages in
# checkpoints/README.md: imgsz 320, batch 16, optimizer auto, amp off) and, beside it on the same GPU, trains a
# YOLOv8n from scratch for STUDENT_EPOCHS (its per-epoch val curve shows where a baseline student converges).
# Everything stops at LIMIT seconds; what each training reached comes back in $OUT:
#   teacher_results.csv, student_results.csv   per-epoch losses and ultralytics' val mAP (on the 320 px pack)
#   teacher_fp16.pt.xz.part-aa, -ab            the teacher's last weights in cvkd's fp16 format, split under 16 MiB:
#                                              cat teacher_fp16.pt.xz.part-* > checkpoints/<name>.pt.xz
#   gpu_teacher.log                            the table below and each training's last lines
#
#   python benchmarks/gpu_pack.py     # once, on the CPU machine: .gpu/ (data at 320 px, ultralytics wheel, shim)
#   device run: command "bash benchmarks/gpu_teacher.sh", carry [".gpu"], timeout_s 590
#   DEVICE=cpu TEACHER_EPOCHS=1 STUDENT_EPOCHS=1 EXTRA="fraction=0.05" LIMIT=900 bash benchmarks/gpu_teacher.sh  # dry run
#
# Then, on the CPU machine, score the returned teacher with the cvkd evaluator on the full-resolution val images
# (checkpoints/README.md has the command) and judge convergence with benchmarks/converged.py teacher_results.csv.
set -uo pipefail
cd "$(dirname "$0")/.."
G=.gpu
OUT="${OUT:-$G/out}"
TEACHER="${TEACHER:-checkpoints/cctv_yolov8s_320_e218_fp16.pt.xz}"
TEACHER_EPOCHS="${TEACHER_EPOCHS:-100}"
STUDENT_EPOCHS="${STUDENT_EPOCHS:-200}"
LIMIT="${LIMIT:-480}"
DEVICE="${DEVICE:-0}"
EXTRA="${EXTRA:-}"  # more ultralytics train arguments, key=value separated by spaces (dry runs: fraction=0.05)
PY="${PY:-python3}"
mkdir -p "$OUT"
LOG="$OUT/gpu_teacher.log"
[ -d "$G/cctv_320/train/images" ] || { echo "error: $G/cctv_320 missing: run python benchmarks/gpu_pack.py first and carry .gpu" | tee "$LOG"; exit 2; }

SITE="$(mktemp -d)/site"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$G"/whl/*.whl \
  || { echo "error: installing $G/whl failed" | tee "$LOG"; exit 2; }
export PYTHONPATH="$SITE:$PWD/$G/shim:$PWD" YOLO_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" -c "import torch, ultralytics; print('torch', torch.__version__, '| ultralytics', ultralytics.__version__, \
'| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee "$LOG"

WORK="$(mktemp -d)"
cat > "$WORK/cctv.yaml" <<EOF
path: $PWD/$G/cctv_320
train: train/images
val: valid/images
names: {0: '0', 1: '1'}
EOF
"$PY" -c "from cvkd.models.export_ultralytics import to_ultralytics_checkpoint as t; t('$TEACHER', '$WORK/teacher_ul.pt', 320)" \
  || { echo "error: $TEACHER could not be written as an ultralytics checkpoint" | tee -a "$LOG"; exit 2; }

cat > "$WORK/train.py" <<'EOF'
import sys
from ultralytics import YOLO

data, device, project, name, model, epochs, *extra = sys.argv[1:]
extra = {k: float(v) if v.replace(".", "", 1).isdigit() else v for k, v in (kv.split("=", 1) for kv in extra)}
YOLO(model).train(data=data, epochs=int(epochs), imgsz=320, batch=16, workers=8, plots=False, device=device,
                  amp=False, cache="ram", seed=0, project=project, name=name, exist_ok=True, **extra)
EOF
t0=$(date +%s)
# EXTRA is a list of key=value words: unquoted on purpose
timeout "$LIMIT" "$PY" "$WORK/train.py" "$WORK/cctv.yaml" "$DEVICE" "$WORK" teacher "$WORK/teacher_ul.pt" \
  "$TEACHER_EPOCHS" $EXTRA > "$WORK/teacher.log" 2>&1 &
tpid=$!
if [ "$STUDENT_EPOCHS" -gt 0 ]; then
  timeout "$LIMIT" "$PY" "$WORK/train.py" "$WORK/cctv.yaml" "$DEVICE" "$WORK" student yolov8n.yaml \
    "$STUDENT_EPOCHS" $EXTRA > "$WORK/student.log" 2>&1 &
  spid=$!
fi
wait $tpid; trc=$?
src=0; [ "$STUDENT_EPOCHS" -gt 0 ] && { wait $spid; src=$?; }
echo "trainings done after $(( $(date +%s) - t0 )) s (teacher rc $trc, student rc $src; 124 = stopped at LIMIT=$LIMIT s)" | tee -a "$LOG"

for name in teacher student; do
  [ -f "$WORK/$name/results.csv" ] && cp "$WORK/$name/results.csv" "$OUT/${name}_results.csv"
  [ -f "$WORK/$name.log" ] && { echo "--- $name: last lines"; tail -c 1500 "$WORK/$name.log" | tr '\r' '\n' | tail -6; } >> "$LOG"
  [ -f "$WORK/$name/results.csv" ] && echo "$name: $(( $(wc -l < "$WORK/$name/results.csv") - 1 )) epochs, last: $(tail -1 "$WORK/$name/results.csv")" | tee -a "$LOG"
done
if [ -f "$WORK/teacher/weights/last.pt" ]; then
  "$PY" tools/slim_checkpoint.py "$WORK/teacher/weights/last.pt" "$WORK/teacher_fp16.pt.xz" | tee -a "$LOG" \
    && split -b 15M "$WORK/teacher_fp16.pt.xz" "$OUT/teacher_fp16.pt.xz.part-"
  sha256sum "$WORK/teacher_fp16.pt.xz" | tee -a "$LOG"
fi
ls -l "$OUT" | tee -a "$LOG"
