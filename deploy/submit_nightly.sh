#!/usr/bin/env bash
# Submit the nightly scoring run for one snapshot date to a running Ray cluster, exactly once,
# wait for it, and exit with its outcome. Called by cron (deploy/nightscore-nightly.cron) or
# systemd (deploy/nightscore-nightly.service); safe to run by hand.
#
#   deploy/submit_nightly.sh [YYYY-MM-DD]        # default: yesterday (this host's local date)
#
# Environment:
#   RAY_ADDRESS          job API of the cluster (default http://127.0.0.1:8265, e.g. through
#                        `ray dashboard cluster.yaml`; from inside the VPC http://<head-ip>:8265)
#   NIGHTSCORE_DATE      snapshot date, if not given as the argument
#   NIGHTSCORE_CONFIG    config file, relative to the repo (default jobs/configs/prod.yaml)
#   NIGHTSCORE_POLL_S    seconds between status checks (default 60)
#   NIGHTSCORE_MAX_WAIT_S  give up waiting after this long (default 28800 = 8 h); the job
#                        itself keeps running and a rerun of this script waits for it again
#   NIGHTSCORE_DRY_RUN=1 print the commands that would run, run nothing, exit 0
#
# Exactly once: the submission id is nightscore-nightly-<DATE>. Ray refuses a second job
# with the same id, so a retried cron/systemd run (or a second operator) cannot start a
# second scoring of that date; this script then just reports the existing job's outcome.
# To really run a date again, see "Nightly operation" in deploy/README-sections.md.
#
# Exit status: 0 the job SUCCEEDED; 2 or 3 the job's own exit status (2 bad config, 3 a
# monitoring alert after the outputs were committed); 1 anything else (job FAILED or
# STOPPED, submission refused for another reason, cluster unreachable, timeout).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"   # --working-dir . and the relative paths below refer to the repository root

log() { printf '%s [submit_nightly] %s\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$*" >&2; }

# ------------------------------------------------------------------ date and submission id
DATE="${1:-${NIGHTSCORE_DATE:-}}"
if [[ -z "$DATE" ]]; then
  # Yesterday in this host's time zone; computed from today's noon so a DST change can
  # never make "24 hours ago" land on the wrong day. GNU date, then BSD/macOS date.
  today="$(date +%F)"
  DATE="$(date -d "$today 12:00 1 day ago" +%F 2>/dev/null || date -j -v-1d -f %F "$today" +%F)"
fi
if ! [[ "$DATE" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]]; then
  log "error: date '$DATE' is not YYYY-MM-DD"
  exit 2
fi

if date -d 2000-01-01 +%F >/dev/null 2>&1 &&   # GNU date: also check it is a real day
   [[ "$(date -d "$DATE" +%F 2>/dev/null || true)" != "$DATE" ]]; then
  log "error: $DATE is not a calendar date"
  exit 2
fi

SUBMISSION_ID="nightscore-nightly-${DATE}"
CONFIG="${NIGHTSCORE_CONFIG:-jobs/configs/prod.yaml}"
RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
POLL_S="${NIGHTSCORE_POLL_S:-60}"
MAX_WAIT_S="${NIGHTSCORE_MAX_WAIT_S:-28800}"

SUBMIT=(ray job submit
  --address "$RAY_ADDRESS"
  --submission-id "$SUBMISSION_ID"
  --working-dir .
  --runtime-env deploy/runtime_env.yaml
  --no-wait
  -- python jobs/nightly.py --config "$CONFIG" --date "$DATE")
LOGS=(ray job logs --address "$RAY_ADDRESS" --follow "$SUBMISSION_ID")
STATUS=(ray job status --address "$RAY_ADDRESS" --log-style record "$SUBMISSION_ID")

if [[ "${NIGHTSCORE_DRY_RUN:-0}" == "1" ]]; then
  echo "date: $DATE"
  echo "submission_id: $SUBMISSION_ID"
  printf 'submit:'; printf ' %q' "${SUBMIT[@]}"; echo
  printf 'logs:'; printf ' %q' "${LOGS[@]}"; echo
  printf 'status:'; printf ' %q' "${STATUS[@]}"; echo
  exit 0
fi

# ------------------------------------------------------------------ job status
# Sets JOB_STATE (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or UNKNOWN when the cluster
# could not be asked) and JOB_EXIT (the entrypoint's exit status when Ray reports it).
JOB_STATE=UNKNOWN
JOB_EXIT=""
job_status() {
  local out
  JOB_STATE=UNKNOWN
  JOB_EXIT=""
  if ! out="$("${STATUS[@]}" 2>&1)"; then
    log "could not get the status of $SUBMISSION_ID: $(printf '%s' "$out" | tail -n 1)"
    return 0
  fi
  out="$(printf '%s\n' "$out" | sed $'s/\x1b\\[[0-9;]*m//g')"   # no colour codes
  if grep -q "Job '$SUBMISSION_ID' succeeded" <<<"$out"; then
    JOB_STATE=SUCCEEDED
  elif grep -q "Job '$SUBMISSION_ID' failed" <<<"$out"; then
    JOB_STATE=FAILED
    JOB_EXIT="$(grep -oE 'entrypoint command failed with exit code [0-9]+' <<<"$out" | head -n 1 | grep -oE '[0-9]+$' || true)"
  elif grep -q "Job '$SUBMISSION_ID' was stopped" <<<"$out"; then
    JOB_STATE=STOPPED
  else
    local s
    s="$(grep -oE "Status for job '$SUBMISSION_ID': [A-Z]+" <<<"$out" | head -n 1 | awk '{print $NF}' || true)"
    JOB_STATE="${s:-UNKNOWN}"
  fi
}

# ------------------------------------------------------------------ submit (once per date)
log "submitting $SUBMISSION_ID to $RAY_ADDRESS (config $CONFIG)"
submitted_now=0
if out="$("${SUBMIT[@]}" 2>&1)"; then
  submitted_now=1
  log "submitted $SUBMISSION_ID"
elif grep -q "already exists" <<<"$out"; then
  log "$SUBMISSION_ID was submitted before: not submitting again, reporting that job's outcome"
else
  printf '%s\n' "$out" >&2
  log "error: submission of $SUBMISSION_ID failed"
  exit 1
fi

# Stream the driver's output into this log while the job runs. Best effort: if the stream
# breaks, the status loop below still waits for the real outcome.
if [[ "$submitted_now" == "1" ]]; then
  "${LOGS[@]}" || log "log stream ended early; waiting on the job status instead"
fi

# ------------------------------------------------------------------ wait for the outcome
start=$SECONDS
unknown_in_a_row=0
while :; do
  job_status
  case "$JOB_STATE" in
    SUCCEEDED|FAILED|STOPPED) break ;;
    UNKNOWN)
      unknown_in_a_row=$((unknown_in_a_row + 1))
      if (( unknown_in_a_row >= 10 )); then
        log "error: cannot reach the job API at $RAY_ADDRESS; $SUBMISSION_ID may still be running"
        exit 1
      fi ;;
    *) unknown_in_a_row=0 ;;
  esac
  if (( SECONDS - start >= MAX_WAIT_S )); then
    log "error: $SUBMISSION_ID still $JOB_STATE after ${MAX_WAIT_S}s; not stopping it (rerun this script to wait again)"
    exit 1
  fi
  sleep "$POLL_S"
done

case "$JOB_STATE" in
  SUCCEEDED)
    log "$SUBMISSION_ID SUCCEEDED"
    exit 0 ;;
  FAILED)
    if [[ "$JOB_EXIT" == "2" ]]; then
      log "$SUBMISSION_ID FAILED with exit status 2: bad usage or config, nothing was scored"
      exit 2
    elif [[ "$JOB_EXIT" == "3" ]]; then
      log "$SUBMISSION_ID exit status 3: MONITORING ALERT; scores were committed, read the report"
      exit 3
    fi
    log "$SUBMISSION_ID FAILED${JOB_EXIT:+ with exit status $JOB_EXIT}"
    exit 1 ;;
  *)
    log "$SUBMISSION_ID $JOB_STATE"
    exit 1 ;;
esac
