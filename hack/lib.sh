# hack/lib.sh: what the demo scripts share (sourced, not run). The caller
# sets WAIT_STEPS (bounded waits: WAIT_STEPS x 50 ms) and pids (the PIDs it
# started, stopped by stop_pids).

bold=$(printf '\033[1m'); dim=$(printf '\033[2m'); off=$(printf '\033[0m')
if [ ! -t 1 ]; then bold=""; dim=""; off=""; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
note() { printf '%s%s%s\n' "$dim" "$*" "$off"; }

# wait_for CMD...: run CMD until it succeeds, a bounded number of times.
wait_for() {
	for _ in $(seq "$WAIT_STEPS"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "$(basename "$0"): timed out waiting for: $*" >&2
	return 1
}

# stop_pids: SIGTERM every PID in pids, then wait for each.
stop_pids() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# fail_log RC FILE: on failure, say so and show the end of FILE.
fail_log() {
	if [ "$1" != 0 ]; then
		echo "$(basename "$0") failed (exit $1); kordon dev's log:" >&2
		tail -n 30 "$2" >&2 2>/dev/null || true
	fi
}
