#!/usr/bin/env bash
# The local demo, end to end on generated data: set-up (first run only), synthetic snapshots,
# MiniLM fine-tuning with Ray Train + DeepSpeed (a champion and a LoRA challenger), approval,
# scoring with Ray Data, the nightly report, the champion/challenger comparison and a back-test.
# Everything lands under demo/ (override with DEMO=path). About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
PY=.venv/bin/python
DEMO=${DEMO:-demo}
TRAIN_DATE=2026-10-31
DAY1=$(date -u -d "2 days ago" +%F)
DAY2=$(date -u -d "yesterday" +%F)
N=(nightly.snapshots=$DEMO/snapshots nightly.output=$DEMO/scores nightly.reports=$DEMO/reports
   nightly.model=null nightly.model_pointer=$DEMO/APPROVED nightly.outcomes=$DEMO/outcomes
   nightly.challenger=$DEMO/challenger nightly.challenger_share=0.2)
step() { printf '\n=== %s\n' "$*"; }

step "1/6 synthetic snapshots: labelled training data, then two nightly snapshots (the second drifted)"
$PY jobs/make_snapshots.py --out "$DEMO/training" --date $TRAIN_DATE --customers 3000 --labels --seed 1
$PY jobs/make_snapshots.py --out "$DEMO/snapshots" --date "$DAY1" --customers 600 --seed 2 --corrupt-fraction 0.01 --labels
$PY jobs/make_snapshots.py --out "$DEMO/snapshots" --date "$DAY2" --customers 600 --seed 3 --corrupt-fraction 0.01 --drift 1.0

step "2/6 fine-tune MiniLM: Ray Train, 2 CPU workers, DeepSpeed ZeRO-2; then a LoRA challenger"
$PY jobs/train.py --train "$DEMO/training" --out "$DEMO/model" --storage "$DEMO/runs" --name demo train.epochs=3
$PY jobs/train.py --train "$DEMO/training" --out "$DEMO/challenger" --storage "$DEMO/runs" --name demo-lora \
    train.epochs=2 train.finetune=lora

step "3/6 approve the champion (the first model has no back-test yet: an override, on record)"
$PY jobs/promote.py --pointer "$DEMO/APPROVED" --model "$DEMO/model" --override --why "demo: first model"

step "4/6 nightly run for $DAY1: champion + challenger in shadow, 20 % of recommendations from the challenger (A/B)"
rc=0; $PY jobs/nightly.py --date "$DAY1" "${N[@]}" || rc=$?
[ "$rc" = 0 ] || [ "$rc" = 3 ] || exit "$rc"  # 3: a threshold crossed, outputs committed: read the report

step "5/6 nightly run for $DAY2 (drifted population: expect a monitoring alert, exit code 3)"
rc=0; $PY jobs/nightly.py --date "$DAY2" "${N[@]}" || rc=$?
[ "$rc" = 3 ] || { echo "expected the drift alert (exit 3), got $rc"; exit 1; }

step "6/6 months later, $DAY1's outcomes land (its labels stand in): a rerun scores nothing, back-tests both models"
mkdir -p "$DEMO/outcomes" && cp -r "$DEMO/snapshots/date=$DAY1" "$DEMO/outcomes/"
$PY jobs/nightly.py --date "$DAY1" "${N[@]}" || [ $? = 3 ]  # 3: a back-test threshold crossed

cat <<DONE

Done. Where everything is:
  model directories  $DEMO/model/ (champion, approved in $DEMO/APPROVED, audit in $DEMO/promotions.jsonl), $DEMO/challenger/
  scores             $DEMO/scores/date=$DAY1/  and  date=$DAY2/   (_manifest.json = commit point)
  challenger scores  $DEMO/scores-challenger/  (shadow: never part of the published scores)
  reports            $DEMO/reports/date=$DAY1/report.html, backtest.html  and  date=$DAY2/report.html
DONE
