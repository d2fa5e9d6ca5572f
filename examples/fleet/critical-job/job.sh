#!/bin/sh
# A pretend critical job that must not be cut short by an update, using the update-lock
# block's trigger-directory protocol (README, "The trigger directory"):
#
#   1. create NAME.lock in the shared directory, its first line the reason;
#   2. wait until the block's status.json lists NAME as a live holder with "locked": true:
#      only then is the update lock held;
#   3. do the work;
#   4. remove NAME.lock (also when stopped with SIGTERM or SIGINT), so the block may release
#      the lock and a pending update can go through.
#
# While the job runs it also holds an flock on its holder file, which keeps the holder live
# even when UPDATE_LOCK_HOLDER_TTL is set shorter than the job. POSIX sh; runs on busybox.
# Needs jq (to read status.json) and flock (busybox or util-linux).
set -eu

dir=${UPDATE_LOCK_DIR:-/update-lock}
name=${HOLDER_NAME:-critical-job}
reason=${JOB_REASON:-pretend critical job}
duration_s=${JOB_DURATION_S:-60}
interval_s=${JOB_INTERVAL_S:-600}
ack_timeout_s=${ACK_TIMEOUT_S:-60}
runs=${JOB_RUNS:-0}  # how many jobs to run; 0: forever

holder="$dir/$name.lock"
holding=""
child=""

release() {
    if [ -n "$child" ]; then
        kill "$child" 2>/dev/null || true
        child=""
    fi
    if [ -n "$holding" ]; then
        # Remove the holder file (ours: it bears our name), then drop its flock (fd 9).
        rm -f "$holder"
        exec 9<&-
        holding=""
        echo "job.released name=$name"
    fi
}

on_signal() {
    release
    echo "job.stopped name=$name"
    exit 0
}
trap on_signal TERM INT

acknowledged() {
    jq -e --arg name "$name" \
        '.locked == true and any(.holders[]?; .name == $name and .live == true)' \
        "$dir/status.json" >/dev/null 2>&1
}

run_job() {
    if ! printf '%s\n' "$reason" >"$holder"; then
        echo "ERROR job.hold-failed name=$name holder=$holder"
        return 1
    fi
    holding=1
    exec 9<"$holder"
    flock -x 9
    echo "job.waiting name=$name holder=$holder timeout_s=$ack_timeout_s"
    waited_s=0
    until acknowledged; do
        if [ "$waited_s" -ge "$ack_timeout_s" ]; then
            echo "ERROR job.not-acknowledged name=$name waited_s=$waited_s" \
                "why=\"no live holder with locked=true in $dir/status.json: is the update-lock block running?\""
            release
            return 1
        fi
        sleep 1
        waited_s=$((waited_s + 1))
    done
    echo "job.started name=$name duration_s=$duration_s"
    # In the background, so a SIGTERM is handled at once rather than after the sleep.
    sleep "$duration_s" &
    child=$!
    wait "$child"
    child=""
    echo "job.finished name=$name"
    release
}

done_runs=0
while :; do
    run_job || true
    done_runs=$((done_runs + 1))
    if [ "$runs" -gt 0 ] && [ "$done_runs" -ge "$runs" ]; then
        break
    fi
    sleep "$interval_s" &
    child=$!
    wait "$child"
    child=""
done
