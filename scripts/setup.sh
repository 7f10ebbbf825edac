#!/usr/bin/env bash
# Make .venv (once) and install vidaccel_train with its pinned dependencies into it, and the tools
# that verify exported programs on aarch64 (no root needed).
# Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
#
#   bash scripts/setup.sh        # the project, its tests and the aarch64 verification tools
#   bash scripts/setup.sh demo   # also the demo page's extra (gradio, selenium) and, run as root,
#                                # Debian's chromium + chromium-driver for its browser test
#   bash scripts/setup.sh test   # what the whole test suite needs: demo's, and, run as root, Debian's
#                                # munge, slurmctld, slurmd and slurm-client for the SLURM tests
#                                # (scripts/slurm_local.sh starts a one-node cluster from them)
#
# The aarch64 tools go into .venv/share/vidaccel_train/targets/aarch64 (export/target.py reads them
# there): Debian bookworm's aarch64 cross compiler and C library (apt-get download + dpkg -x, no
# install), qemu-aarch64 from Debian trixie's qemu-user (10.0; bookworm's 7.2 gets SME wrong),
# fetched through a private apt state, and the executorch wheel for aarch64 (its include/ and lib/).
# VIDACCEL_NO_TARGETS=1 skips them (then the export needs callbacks.export.targets=[]).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "" | demo | test) ;;
  *) echo "usage: bash scripts/setup.sh [demo|test]" >&2; exit 2 ;;
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

# In a subshell: its temporary folder goes whatever way it ends.
install_aarch64_tools() (
  local root=.venv/share/vidaccel_train/targets/aarch64
  local et_version
  et_version=$(.venv/bin/python -c "from importlib import metadata; print(metadata.version('executorch').split('+')[0])")
  local tools_want="$et_version qemu>=10 gcc-12-cross 1"
  [ "$(cat "$root/.installed" 2>/dev/null)" = "$tools_want" ] && return 0
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  if [ "$(uname -m)" != x86_64 ] || ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null \
      || [ ! -f "$keyring" ]; then
    echo "[setup] warning: no aarch64 verification tools: they are fetched from Debian's archive with apt-get and" \
      "dpkg on an x86_64 host with $keyring (Debian's debian-archive-keyring); export with" \
      "callbacks.export.targets=[] here (docs/quantization-and-export.md#verified-on-the-target)" >&2
    return 0
  fi
  echo "[setup] fetching the aarch64 verification tools (cross compiler, qemu 10, executorch $et_version for aarch64)"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  rm -rf "$root" && mkdir -p "$root"
  # A private apt state: bookworm for the cross compiler, trixie for qemu-user 10.
  local apt_dir="$work/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.d" "$apt_dir/prefs.d" "$work/debs"
  printf '%s\n' "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main" \
    "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
  local apt_opts=(-o "Dir::State=$apt_dir" -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.d"
    -o "Dir::Etc::Preferences=$apt_dir/prefs.d" -o "Dir::State::status=/dev/null" -o "APT::Architecture=amd64"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)" -q)
  apt-get "${apt_opts[@]}" update >/dev/null
  local cross=(binutils-aarch64-linux-gnu/bookworm cpp-12-aarch64-linux-gnu/bookworm g++-12-aarch64-linux-gnu/bookworm
    gcc-12-aarch64-linux-gnu/bookworm libc6-arm64-cross/bookworm libc6-dev-arm64-cross/bookworm
    libgcc-12-dev-arm64-cross/bookworm libgcc-s1-arm64-cross/bookworm libstdc++-12-dev-arm64-cross/bookworm
    libstdc++6-arm64-cross/bookworm linux-libc-dev-arm64-cross/bookworm libatomic1-arm64-cross/bookworm)
  (cd "$work/debs" && apt-get "${apt_opts[@]}" download "${cross[@]}" qemu-user/trixie >/dev/null)
  for deb in "$work"/debs/*-cross_*.deb "$work"/debs/*-aarch64-linux-gnu_*.deb; do dpkg -x "$deb" "$root/gcc"; done
  dpkg -x "$work"/debs/qemu-user_*.deb "$work/qemu"
  cp "$work/qemu/usr/bin/qemu-aarch64" "$root/qemu-aarch64"
  "$root/qemu-aarch64" --version | head -1
  # The executorch wheel for aarch64: only the C++ runtime (include/, lib/) is used.
  local said
  if ! said=$(.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
      --python-version "$(.venv/bin/python -c "import sys; print('%d.%d' % sys.version_info[:2])")" "executorch==$et_version" -d "$work/wheel" 2>&1); then
    echo "$said" >&2
    return 1
  fi
  .venv/bin/python - "$work"/wheel/executorch-*.whl "$root/executorch" "$et_version" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, out, version = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if n.startswith(("executorch/include/", "executorch/lib/lib"))]
    archive.extractall(out.parent / "wheel", names)
(out.parent / "wheel" / "executorch").rename(out)
(out.parent / "wheel").rmdir()
(out / "VERSION").write_text(version + "\n")
PY
  echo "$tools_want" > "$root/.installed"
)

if [ -n "${VIDACCEL_NO_TARGETS:-}" ]; then
  echo "[setup] VIDACCEL_NO_TARGETS is set: no aarch64 verification tools (export with callbacks.export.targets=[])"
else
  install_aarch64_tools
fi

[ -n "${1:-}" ] || exit 0

demo_stamp=.venv/.vidaccel-demo-installed
if [ "$(cat "$demo_stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the demo page's dependencies (gradio, selenium) into .venv"
  .venv/bin/python -m pip install -q -e ".[test,demo]"
  echo "$want" > "$demo_stamp"
fi
# Debian packages (as root): chromium for the demo's browser test; for `test`, SLURM too.
packages=()
command -v chromium >/dev/null && command -v chromedriver >/dev/null || packages+=(chromium chromium-driver)
if [ "$1" = test ]; then
  for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { packages+=(munge slurmctld slurmd slurm-client); break; }
  done
fi
[ ${#packages[@]} -gt 0 ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing ${packages[*]} (apt-get)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null
else
  echo "[setup] not installed (needs root and apt-get): ${packages[*]}; the tests that need them" \
       "(the demo's browser test, the SLURM tests) are skipped"
fi
