#!/usr/bin/env bash
# Creates .venv and installs nightscore with its test extras. CPU machines use the CPU
# build of torch (constraints-cpu.txt); set NIGHTSCORE_GPU=1 on a GPU node to take the CUDA build.
#
# uv installs the same pinned set as pip, several times faster on a 2-core VM; pip is the
# fallback. uv does not read pip's configuration, so the find-links pip is given through
# PIP_FIND_LINKS (a local wheel folder) are passed on. Like pip, it compiles the bytecode at
# install: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile torch,
# transformers and Ray from source at each import.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
constraints=(-c constraints-cpu.txt)
[ "${NIGHTSCORE_GPU:-0}" = "1" ] && constraints=()
links=()
for link in ${PIP_FIND_LINKS:-}; do links+=(--find-links "$link"); done
if ! { .venv/bin/python -m pip install -q uv==0.13.10 &&
       .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${links[@]}" "${constraints[@]}" \
           -e '.[dev]'; }; then
    echo "setup: uv could not install the environment; installing with pip" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "${constraints[@]}" -e '.[dev]'
fi
