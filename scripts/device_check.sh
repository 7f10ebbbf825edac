#!/usr/bin/env bash
# One prepared check for a machine with a GPU (and, minus the GPU parts, for any machine):
#
#     bash scripts/device_check.sh OUT_DIR [--quick] [--part tests|speed]
#
# Writes OUT_DIR/device_check.log (everything printed) and OUT_DIR/device_check.json:
#   env         GPU, CUDA, torch / lightning / torchao / executorch versions, cores
#   gpu_tests   python -m pytest -m gpu tests/test_gpu.py tests/test_devices.py (skipped without CUDA)
#   cli_qat     one CLI QAT fine-tune (smoke experiment) with export: seconds, metrics, manifest
#   throughput  training clips/s, full pipeline against in-memory tensors, X3D-XS and X3D-S, fp32
#               and QAT, on a generated Kinetics-like set (scripts/make_kinetics_like.py) whose
#               index is repeated so that every worker stays busy (steady state), and X3D-XS
#               again on its random-access copy (scripts/prepare_dataset.py)
#   qat_step    QAT step time over the fp32 step (scripts/bench_qat_step.py), X3D-XS and X3D-S
# About 10 minutes on an H100 machine with 16 cores; where one command may run 10 minutes at
# most, run --part tests (env, gpu_tests, cli_qat) and --part speed (env, the data, throughput,
# prepare_copy, qat_step) as two calls into two OUT_DIRs. On a machine without network, put the
# wheels the project needs in .whl/ first (see ../shared/device/README.md): they are
# installed into /tmp/site. --quick shrinks the data and the measurements (CPU trial runs:
# 10 minutes on 2 cores).
set -uo pipefail
out=$(realpath -m "${1:?usage: bash scripts/device_check.sh OUT_DIR [--quick] [--part tests|speed]}")
shift
quick= part=all
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=--quick ;;
    --part) part=${2:?--part takes tests or speed}; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case $part in tests|speed|all) ;; *) echo "--part takes tests or speed, not $part" >&2; exit 2 ;; esac
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
cores=$(nproc)
gpu=$("$python" -c "import torch; print(int(torch.cuda.is_available()))")
results=$out/steps.jsonl; : > "$results"

step() {  # step NAME TIMEOUT_S COMMAND...: run, time and record it
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name: $*"
  local started=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - started))}" >> "$results"
  echo "=== $name: exit $rc in $((SECONDS - started)) s"
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

if [ "$part" != speed ]; then
step gpu_tests 330 "$python" -m pytest -q -p no:cacheprovider -m "gpu or not gpu" tests/test_gpu.py tests/test_devices.py \
  --junitxml="$out/gpu_tests.xml"

trainer=$([ "$gpu" = 1 ] && echo trainer=gpu || echo trainer=cpu)
step cli_qat 300 "$python" -m vidaccel_train experiment=smoke "$trainer" "hydra.run.dir=$out/cli_qat" \
  "paths.data_dir=$out/data" callbacks.rich_progress_bar=null callbacks.export.latency_repeats=5
fi

if [ "$part" != tests ]; then

if [ "$quick" = --quick ]; then per_class=2; samples=64; steps=4; workers=$cores; xs_batch=8; s_batch=4
else per_class=8; samples=1920; steps=20; workers=$((cores > 1 ? cores - 1 : 1)); xs_batch=64; s_batch=32; fi
device=$([ "$gpu" = 1 ] && echo cuda || echo cpu)
step kinetics_like 240 "$python" scripts/make_kinetics_like.py "$out/kinetics_like" "$per_class" 8
for spec in "x3d_xs $xs_batch 1" "x3d_xs $xs_batch 2" "x3d_s $s_batch 1"; do
  set -- $spec
  step "throughput_$1_b$2_k$3" 240 "$python" scripts/bench_train_throughput.py --root "$out/kinetics_like" \
    --model "$1" --batch "$2" --clips-per-video "$3" --workers "$workers" --samples "$samples" --steps "$steps" \
    --device "$device" --json "$out/throughput_$1_b$2_k$3.json"
done
step prepare_copy 240 "$python" scripts/prepare_dataset.py "$out/kinetics_like" "$out/kinetics_like_copy" \
  --workers "$cores" --measure-videos 16
cp "$out/kinetics_like_copy/prepare_report.json" "$out/prepare_report.json" 2>/dev/null
step "throughput_x3d_xs_b${xs_batch}_k1_copy" 240 "$python" scripts/bench_train_throughput.py \
  --root "$out/kinetics_like_copy" --model x3d_xs --batch "$xs_batch" --clips-per-video 1 --workers "$workers" \
  --samples "$samples" --steps "$steps" --device "$device" --json "$out/throughput_x3d_xs_b${xs_batch}_k1_copy.json"
for spec in "x3d_xs $xs_batch" "x3d_s $s_batch"; do
  set -- $spec
  step "qat_step_$1_b$2" 180 "$python" scripts/bench_qat_step.py --model "$1" --batch "$2" --device "$device" --steps "$steps"
done
fi

"$python" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
report = {"env": json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else None,
          "steps": [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]}
tests = out / "gpu_tests.xml"
if tests.exists():
    import xml.etree.ElementTree as ET
    root = ET.parse(tests).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    report["gpu_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
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
print(json.dumps({"steps": report["steps"], "gpu_tests": report.get("gpu_tests")}, indent=2))
EOF
rm -rf "$out/data" "$out/kinetics_like" "$out/kinetics_like_copy"  # generated inputs: the figures are what comes back
