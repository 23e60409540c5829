#!/usr/bin/env bash
# Creates .venv and installs voxmill into it: the job stack (`voxmill[job]`, the CLI), or with "test"
# everything the tests need (`voxmill[test]`: job, gpu, hf, s3 and the test tools). A trainer who only
# reads outputs needs neither: `pip install voxmill` (the core reader; see README "Training loader").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # The long-file test cuts an excerpt with the ffmpeg command line.
  if ! ldconfig -p | grep -q libavutil; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
  fi
  # The report test opens the page in a real headless browser: Debian's chromium, driven by
  # Playwright (which must not download a browser of its own).
  # The bad-input tests make an 8 kHz 8-bit file with sox; the report test needs chromium; the
  # language test speaks German and Spanish with espeak-ng.
  missing=""
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v sox >/dev/null || missing="$missing sox"
  command -v espeak-ng >/dev/null || missing="$missing espeak-ng"
  if [ -n "$missing" ]; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  .venv/bin/python -m pip install --quiet -e ".[test]"
else
  .venv/bin/python -m pip install --quiet -e ".[job]"
fi
# speakers.enabled uses only the trained weights inside Resemblyzer's wheel (Apache-2.0): voxmill computes
# the mel and runs the encoder itself, so the package's own dependencies (librosa, numba, a compiled
# webrtcvad) are left out
.venv/bin/python -m pip install --quiet --no-deps "resemblyzer==0.1.4"
