#!/usr/bin/env bash
# One prepared check for a machine with a GPU, one part per call:
#
#     bash scripts/device_check.sh OUT_DIR --part fits|qat|speed [--quick]
#     bash scripts/device_check.sh OUT_DIR --dry-run [--part P]  # every step (of part P) on the CPU, tiny sizes
#
# Each part writes into OUT_DIR as it goes (a step cut off by its time limit loses nothing that
# ended before it): device_check.log (everything printed), steps.jsonl (a line per step: exit
# code, seconds), tests.jsonl (a line per test as it ends), and at the end device_check.json.
#   env          GPU, CUDA, torch / lightning / torchao / executorch versions, cores; a part other
#                than the dry run stops here with exit 3 when torch sees no CUDA device
#   --part fits  gpu_fits: tests/test_gpu.py's four fits (fp32 with the GPU/CPU logits check,
#                bf16 + PTQ + export, QAT from epoch 0, DDP on one GPU with QAT mid-run)
#   --part qat   gpu_qat: one QAT run and what its checkpoint must do (CUDA steps, int8 export,
#                GPU/CPU logits, test and resume on the CPU, resume on the GPU, export with no GPU
#                seen); cli_qat: one CLI QAT fine-tune (smoke experiment) with export
#   --part speed throughput: training clips/s, full pipeline against in-memory tensors, X3D-XS and
#                X3D-S, fp32 and QAT, on a generated Kinetics-like set (make_kinetics_like.py)
#                whose index is repeated so that every worker stays busy, and X3D-XS again on its
#                random-access copy (prepare_dataset.py); qat_step: QAT step time over fp32 step
# Limits: each part fits well inside 10 minutes on a 16-core H100 machine (the steps' own limits
# add up to at most 9 minutes; the dry run gives each step 4 times its limit). --quick shrinks the
# data and the measurements. --dry-run (no GPU
# needed: the default test suite runs it) runs every part's steps on the CPU at the tests' tiny
# sizes, the GPU tests up to their CUDA checks (VIDACCEL_GPU_DRY_RUN=1), so a change that would
# break a step fails here and not on a GPU machine. On a machine without network, put the wheels
# the project needs in .whl/ first (../shared/device/README.md): they go into /tmp/site.
set -uo pipefail
out=$(realpath -m "${1:?usage: bash scripts/device_check.sh OUT_DIR --part fits|qat|speed [--quick] | --dry-run [--part P]}")
shift
quick= part= dry=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    --part) part=${2:?--part takes fits, qat or speed}; shift ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$dry" ] && [ -z "$part" ]; then
  parts="fits qat speed"
else
  case $part in
    fits|qat|speed) parts=$part ;;
    "") echo "error: name one part (--part fits, qat or speed; one call each) or --dry-run" >&2; exit 2 ;;
    *) echo "error: --part takes fits, qat or speed, not $part" >&2; exit 2 ;;
  esac
fi
cd "$(dirname "$0")/.."
mkdir -p "$out"
exec > >(tee "$out/device_check.log") 2>&1

python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$python" -c "import executorch, hydra, av" 2>/dev/null && [ -d .whl ]; then
  echo "[device_check] installing .whl/*.whl into /tmp/site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:$PWD/scripts:${PYTHONPATH:-}
export VIDACCEL_TEST_RESULTS=$out/tests.jsonl  # tests/conftest.py appends a line per test as it ends
cores=$(nproc)
: > "$out/steps.jsonl"; : > "$out/tests.jsonl"

# The limits are sized for the GPU machine; the dry run's CPU does the same work slower.
scale=$([ -n "$dry" ] && echo 4 || echo 1)

step() {  # step NAME TIMEOUT_S COMMAND...: run, time and record it (the record is written at once)
  local name=$1 limit=$(($2 * scale)); shift 2
  echo; echo "=== $name: $*"
  local started=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - started)), \"limit\": $limit}" >> "$out/steps.jsonl"
  echo "=== $name: exit $rc in $((SECONDS - started)) s (limit $limit s)"
}

step env 60 "$python" - "$out/env.json" <<'EOF'
import json, os, sys, importlib.metadata as md
import torch
info = {"cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda_runtime": torch.version.cuda, "cores": os.cpu_count(),
        "python": sys.version.split()[0]}
for package in ("lightning", "torchao", "executorch", "torchvision", "av", "pytorchvideo"):
    try:
        info[package] = md.version(package)
    except md.PackageNotFoundError:
        info[package] = None
print(json.dumps(info, indent=2))
open(sys.argv[1], "w").write(json.dumps(info))
EOF
gpu=$("$python" -c "import json, sys; print(int(json.load(open(sys.argv[1]))['cuda']))" "$out/env.json" 2>/dev/null || echo 0)
if [ "$gpu" != 1 ] && [ -z "$dry" ]; then
  echo "error: torch sees no CUDA device here; a GPU check without one would measure the CPU (on a CPU machine use --dry-run)"
  exit 3
fi
device=$([ "$gpu" = 1 ] && echo cuda || echo cpu)
gpu_tests=(env VIDACCEL_GPU_DRY_RUN="${dry:+1}" "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py)

for part in $parts; do
case $part in
fits)
  step gpu_fits 420 "${gpu_tests[@]}" -k test_a_gpu_run_fits --junitxml="$out/gpu_fits.xml"
  ;;
qat)
  step gpu_qat 360 "${gpu_tests[@]}" -k "not test_a_gpu_run_fits" --junitxml="$out/gpu_qat.xml"
  if [ -n "$dry" ]; then  # the tests' tiny model and data: the step's wiring, not its figures
    tiny=(model=x3d_tiny model.clip.crop_size=32 "model.clip.train_short_side=[36,40]" model.clip.eval_short_side=36
          "data.synthetic.clips_per_class={train:3,val:2,test:2}" data.synthetic.height=48 data.synthetic.width=64
          data.synthetic.duration_s=1.0 data.synthetic.fps=15 data.low_res_epochs=0 trainer.max_epochs=2
          quant.start_epoch=1 data.num_workers=1 callbacks.export.latency_rounds=1)
  else
    tiny=()
  fi
  step cli_qat 150 "$python" -m vidaccel_train experiment=smoke "trainer=$([ "$gpu" = 1 ] && echo gpu || echo cpu)" \
    "hydra.run.dir=$out/cli_qat" "paths.data_dir=$out/data" callbacks.rich_progress_bar=null \
    callbacks.export.latency_repeats=5 "callbacks.export.targets=[]" "${tiny[@]}"
  ;;
speed)
  if [ -n "$dry" ]; then per_class=2; classes=2; seconds=2; samples=16; steps=2; workers=1; xs_batch=2; s_batch=2
    models=("x3d_tiny $xs_batch 1"); qat_models=("x3d_tiny $xs_batch"); copy_model=x3d_tiny
  elif [ -n "$quick" ]; then per_class=2; classes=8; seconds=10; samples=64; steps=4; workers=$cores; xs_batch=8; s_batch=4
  else per_class=8; classes=8; seconds=10; samples=1920; steps=20; workers=$((cores > 1 ? cores - 1 : 1)); xs_batch=64; s_batch=32; fi
  if [ -z "$dry" ]; then
    models=("x3d_xs $xs_batch 1" "x3d_xs $xs_batch 2" "x3d_s $s_batch 1"); qat_models=("x3d_xs $xs_batch" "x3d_s $s_batch")
    copy_model=x3d_xs
  fi
  step kinetics_like 120 "$python" scripts/make_kinetics_like.py "$out/kinetics_like" "$per_class" "$classes" "$seconds"
  for spec in "${models[@]}"; do
    set -- $spec
    step "throughput_$1_b$2_k$3" 90 "$python" scripts/bench_train_throughput.py --root "$out/kinetics_like" \
      --model "$1" --batch "$2" --clips-per-video "$3" --workers "$workers" --samples "$samples" --steps "$steps" \
      --device "$device" --json "$out/throughput_$1_b$2_k$3.json"
  done
  step prepare_copy 90 "$python" scripts/prepare_dataset.py "$out/kinetics_like" "$out/kinetics_like_copy" \
    --workers "$cores" --measure-videos "$([ -n "$dry" ] && echo 2 || echo 16)"
  cp "$out/kinetics_like_copy/prepare_report.json" "$out/prepare_report.json" 2>/dev/null
  step "throughput_${copy_model}_b${xs_batch}_k1_copy" 90 "$python" scripts/bench_train_throughput.py \
    --root "$out/kinetics_like_copy" --model "$copy_model" --batch "$xs_batch" --clips-per-video 1 --workers "$workers" \
    --samples "$samples" --steps "$steps" --device "$device" --json "$out/throughput_${copy_model}_b${xs_batch}_k1_copy.json"
  for spec in "${qat_models[@]}"; do
    set -- $spec
    step "qat_step_$1_b$2" 60 "$python" scripts/bench_qat_step.py --model "$1" --batch "$2" --device "$device" --steps "$steps"
  done
  ;;
esac
done

"$python" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
lines = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines() if line.strip()]
report = {"env": json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else None,
          "steps": lines("steps.jsonl"), "tests": lines("tests.jsonl")}
outcomes = [t["outcome"] for t in report["tests"]]
report["test_counts"] = {o: outcomes.count(o) for o in sorted(set(outcomes))}
run = out / "cli_qat"
if (run / "metrics.json").exists():
    report["cli_qat"] = json.loads((run / "metrics.json").read_text())["metrics"]
if (run / "export" / "manifest.json").exists():
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    report["cli_qat_export"] = {a["precision"]: {k: a[k] for k in ("top1", "agreement", "latency_ms")} for a in manifest["artifacts"]}
if (out / "prepare_report.json").exists():
    report["prepare_copy"] = json.loads((out / "prepare_report.json").read_text())
report["throughput"] = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("throughput_*.json"))}
(out / "device_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps({"steps": report["steps"], "tests": report["test_counts"]}, indent=2))
failed = [s["step"] for s in report["steps"] if s["rc"] != 0]
if failed:
    print(f"failed steps: {', '.join(failed)}")
sys.exit(1 if failed else 0)
EOF
rc=$?
rm -rf "$out/data" "$out/kinetics_like" "$out/kinetics_like_copy" "$out/cli_qat/checkpoints"  # generated inputs and weights: the figures are what comes back
exit $rc
