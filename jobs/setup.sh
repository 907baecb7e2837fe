#!/usr/bin/env bash
# Creates .venv and installs nightscore with its test extras. CPU machines use the CPU
# build of torch (constraints-cpu.txt); set NIGHTSCORE_GPU=1 on a GPU node to take the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
constraints=(-c constraints-cpu.txt)
[ "${NIGHTSCORE_GPU:-0}" = "1" ] && constraints=()
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${constraints[@]}" -e '.[dev]'
