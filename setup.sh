#!/usr/bin/env bash
# One command: install everything, then run the offline mini recipe end to end (all six stages on CPU).
#   bash setup.sh [--enable-contrib-nonfree] [--skip-apt] [--skip-demo]
# --enable-contrib-nonfree lets egs/mini/local/install_tts.sh add Debian's contrib and non-free components
#   (MBROLA voices, SVOX pico) to the existing apt source; without it only Debian main's voices are installed.
# Run it inside the Python environment you want to use (a fresh venv is recommended; see README).
set -euo pipefail
cd "$(dirname "$0")"

tts_flags=()
skip_apt=false
skip_demo=false
for arg in "$@"; do
  case "$arg" in
    --enable-contrib-nonfree) tts_flags+=(--enable-contrib-nonfree) ;;
    --skip-apt) skip_apt=true ;;
    --skip-demo) skip_demo=true ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 1 ;;
  esac
done

if [ "$skip_apt" = false ]; then
  echo "== system packages: TTS voices, sox, ffmpeg"
  as_root=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then as_root=(sudo); fi  # apt needs root
  ${as_root[@]+"${as_root[@]}"} bash egs/mini/local/install_tts.sh ${tts_flags[@]+"${tts_flags[@]}"}
fi

echo "== Python packages (pinned) and this package"
python -m pip install -r requirements.txt
python -m pip install -e . --no-deps

if [ "$skip_demo" = false ]; then
  echo "== mini recipe: stages 1-6"
  bash egs/mini/run.sh
fi
