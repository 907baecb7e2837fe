#!/usr/bin/env bash
# The local demo, end to end on generated data: set-up (first run only), synthetic snapshots,
# MiniLM fine-tuning with Ray Train + DeepSpeed, scoring with Ray Data, the nightly report.
# Everything lands under demo/ (override with DEMO=path). About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
PY=.venv/bin/python
DEMO=${DEMO:-demo}
TRAIN_DATE=2026-10-31
DAY1=$(date -u -d "2 days ago" +%F)
DAY2=$(date -u -d "yesterday" +%F)
N=(nightly.snapshots=$DEMO/snapshots nightly.output=$DEMO/scores nightly.reports=$DEMO/reports nightly.model=$DEMO/model)
step() { printf '\n=== %s\n' "$*"; }

step "1/5 synthetic snapshots: labelled training data, then two nightly snapshots (the second drifted)"
$PY jobs/make_snapshots.py --out "$DEMO/training" --date $TRAIN_DATE --customers 3000 --labels --seed 1
$PY jobs/make_snapshots.py --out "$DEMO/snapshots" --date "$DAY1" --customers 600 --seed 2 --corrupt-fraction 0.01
$PY jobs/make_snapshots.py --out "$DEMO/snapshots" --date "$DAY2" --customers 600 --seed 3 --corrupt-fraction 0.01 --drift 1.0

step "2/5 fine-tune MiniLM: Ray Train, 2 CPU workers, DeepSpeed ZeRO-2"
$PY jobs/train.py --train "$DEMO/training" --out "$DEMO/model" --storage "$DEMO/runs" --name demo train.epochs=3

step "3/5 nightly run for $DAY1: score + monitoring report"
$PY jobs/nightly.py --date "$DAY1" "${N[@]}"

step "4/5 nightly run for $DAY2 (drifted population: expect a monitoring alert, exit code 3)"
rc=0; $PY jobs/nightly.py --date "$DAY2" "${N[@]}" || rc=$?
[ "$rc" = 3 ] || { echo "expected the drift alert (exit 3), got $rc"; exit 1; }

step "5/5 rerun of $DAY1 is a no-op (already committed)"
$PY jobs/nightly.py --date "$DAY1" "${N[@]}"

cat <<DONE

Done. Where everything is:
  training data      $DEMO/training/date=$TRAIN_DATE/
  model directory    $DEMO/model/   (manifest.json, metrics.json, backbone/, heads.safetensors)
  scores             $DEMO/scores/date=$DAY1/  and  date=$DAY2/   (_manifest.json = commit point)
  reports            $DEMO/reports/date=$DAY1/report.html  and  date=$DAY2/report.html
DONE
