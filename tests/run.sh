#!/usr/bin/env bash
# The test command: sets up .venv on first use (CPU build of torch), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
exec .venv/bin/python -m pytest "$@"
