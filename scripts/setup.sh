#!/usr/bin/env bash
# Make .venv (once) and install vidaccel_train with its pinned dependencies into it.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
#
#   bash scripts/setup.sh        # the project and its tests
#   bash scripts/setup.sh demo   # also the demo page's extra (gradio, selenium) and, run as root,
#                                # Debian's chromium + chromium-driver for its browser test
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "" | demo) ;;
  *) echo "usage: bash scripts/setup.sh [demo]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.vidaccel-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing vidaccel_train and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
[ "${1:-}" = demo ] || exit 0

demo_stamp=.venv/.vidaccel-demo-installed
if [ "$(cat "$demo_stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the demo page's dependencies (gradio, selenium) into .venv"
  .venv/bin/python -m pip install -q -e ".[test,demo]"
  echo "$want" > "$demo_stamp"
fi
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing chromium and chromium-driver for the demo's browser test (apt-get)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
else
  echo "[setup] the demo's browser test needs chromium and chromium-driver (Debian: apt-get install chromium" \
       "chromium-driver, as root); tests/test_demo.py skips it without them"
fi
