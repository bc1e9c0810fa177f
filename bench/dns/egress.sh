#!/usr/bin/env bash
# bench/dns/egress.sh: kordon's resolver with the egress firewall ON for the
# served workload against the same resolver with it OFF, in ONE run, on a
# cache-hit and a cache-miss workload (dnsperf), plus the answer-to-kernel
# programming latency (p50/p99 from kordon_dnsguard_firewall_admit_seconds).
#
# Everything runs inside one network namespace the script creates (root
# needed): NSD as the upstream on its loopback, `kordon dev --egress-firewall`
# on 10.96.0.53:53 and `kordon dev` (no firewall) on 127.0.0.1, both with
# the same config: workloads with label app=bench under an Enforce
# EgressPolicy allowing *.bench.test, so every answer they get is programmed
# into the kernel before it is sent. Each workload has one address (the
# firewall-on client 10.244.0.2, the off one 127.0.0.1): a grant adds one
# element per answer address, as for a pod's IPv4 address.
#
# Misses resolve to distinct addresses (100.64.0.0/10 in the zone: no packet
# is ever sent to them), so each miss adds a new set element. Every miss
# name is asked once (dnsperf -n 1: a round ends early rather than turn
# misses into cache hits), and the miss load comes from SOURCES dnsperf
# processes on SOURCES workloads (10.244.1.i for on, 127.0.1.i for off)
# at the same total concurrency: one source holds at most 65,536 learned
# elements (egress), past which grants are dropped, so a single source
# would measure the cap, not the path, after a few seconds. The namespace
# is deleted at the end.
#
#   bench/dns/egress.sh                     # 3 rounds of 10 s
#   DURATION=5 RUNS=1 bench/dns/egress.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/dns/lib.sh
. bench/dns/lib.sh
SOURCES=${SOURCES:-16}
# Distinct miss names in the zone: enough for every server and round (a
# round that runs out of names ends early, its QPS still right).
NAMES=${NAMES:-$((40000 * DURATION * RUNS * 2))}
if [ $((NAMES / 2 / SOURCES)) -gt 65536 ]; then
	echo "bench/dns/egress.sh: NAMES/2/SOURCES > 65,536: the per-source element cap would be measured; raise SOURCES" >&2
	exit 1
fi

if [ "$(id -u)" != 0 ]; then
	echo "bench/dns/egress.sh: needs root (network namespace, nftables)" >&2
	exit 1
fi
install_missing dnsperf:dnsperf nsd:nsd dig:bind9-dnsutils
make -s build >/dev/null
KORDON=$PWD/bin/kordon

WORK=$(mktemp -d /tmp/kordon-bench-egress.XXXXXX)
NS=kbe$$
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
in_ns ip link set lo up
in_ns ip addr add 10.96.0.53/32 dev lo
in_ns ip addr add 10.244.0.2/32 dev lo
for i in $(seq 1 "$SOURCES"); do in_ns ip addr add 10.244.1.$i/32 dev lo; done

NSD_PORT=5301 OFF_PORT=5353
# --- NSD upstream: NAMES distinct names with distinct addresses, and hit names.
{
	printf '$ORIGIN bench.test.\n$TTL 3600\n@ IN SOA ns.bench.test. h.bench.test. 1 3600 600 86400 3600\n@ IN NS ns.bench.test.\nns IN A 127.0.0.1\n'
	for i in $(seq 1 100); do printf 'hit%d IN A 198.51.100.%d\n' "$i" "$i"; done
	printf 'ready IN A 198.51.100.200\n'
	awk -v n="$NAMES" 'BEGIN { for (i = 0; i < n; i++) printf "m%d IN A 100.%d.%d.%d\n", i, 64 + int(i / 65536), int(i / 256) % 256, i % 256 }'
} >"$WORK/bench.test.zone"
nsd_conf "$WORK" "$NSD_PORT"
ip netns exec "$NS" /usr/sbin/nsd -d -c "$WORK/nsd.conf" >"$WORK/nsd.log" 2>&1 &
PIDS+=($!)

mkdir -p "$WORK/config"
{
	echo "- {name: bench-on, namespace: bench, serviceAccount: bench, labels: {app: bench}, ips: [10.244.0.2]}"
	echo "- {name: bench-off, namespace: bench, serviceAccount: bench, labels: {app: bench}, ips: [127.0.0.1]}"
	for i in $(seq 1 "$SOURCES"); do
		echo "- {name: bench-on-$i, namespace: bench, serviceAccount: bench, labels: {app: bench}, ips: [10.244.1.$i]}"
		echo "- {name: bench-off-$i, namespace: bench, serviceAccount: bench, labels: {app: bench}, ips: [127.0.1.$i]}"
	done
} >"$WORK/config/workloads.yaml"
cat >"$WORK/config/egress.yaml" <<P
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: bench-egress, namespace: bench}
spec:
  selector: {matchLabels: {app: bench}}
  allow: ["*.bench.test"]
P

start_dev() { # name dns-listen extra-args...
	local name=$1 listen=$2
	shift 2
	# Not through in_ns: a backgrounded function is a subshell, and $! must
	# be the server itself (ip netns exec execs it) for the CPU figures.
	ip netns exec "$NS" "$KORDON" dev --config "$WORK/config" --upstream 127.0.0.1:$NSD_PORT --dns-listen "$listen" \
		--http-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 --state-dir "$WORK/state-$name" \
		--addr-file "$WORK/$name.addr" --query-log "$WORK/$name-queries.log" "$@" \
		>"$WORK/$name.out" 2>"$WORK/$name.err" &
	PIDS+=($!)
	eval "${name}_PID=$!"
}
start_dev on 10.96.0.53:53 --egress-firewall --internal-cidr 10.244.0.0/16 --internal-cidr 10.96.0.0/12 --flow-log "$WORK/flows.log"
start_dev off 127.0.0.1:$OFF_PORT

wait_ready() { # name server port source
	for _ in $(seq 1 300); do
		if in_ns dig +short +tries=1 +time=1 -b "$4" @"$2" -p "$3" ready.bench.test A 2>/dev/null | grep -q 198.51.100.200; then return 0; fi
		sleep 0.1
	done
	echo "$1 did not become ready"
	tail -n 20 "$WORK"/*.err "$WORK/nsd.log"
	exit 1
}
wait_ready on 10.96.0.53 53 10.244.0.2
wait_ready off 127.0.0.1 $OFF_PORT 127.0.0.1
HTTP_ON=$(sed -n 's/^http=//p' "$WORK/on.addr")

# run_load SERVER PORT SOURCE PID DATA -> "qps us_per_query"
run_load() {
	local before after out qps completed
	before=$(cpu_ticks "$4")
	out=$(in_ns dnsperf -s "$1" -p "$2" -a "$3" -d "$5" -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" -t 2 2>&1)
	after=$(cpu_ticks "$4")
	qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
	completed=$(echo "$out" | awk '/Queries completed/ {print $3}')
	awk -v q="$qps" -v c="$completed" -v d=$((after - before)) -v t="$TCK" 'BEGIN { printf "%.0f %.1f\n", q, (c>0 ? d/t/c*1e6 : 0) }'
}
# run_misses SERVER PORT SOURCE-PREFIX PID -> "qps us_per_query": SOURCES
# dnsperf processes at once, each on its own names (miss-i.txt), asked once.
run_misses() {
	local before after i out=() qps=0 completed=0 c q
	before=$(cpu_ticks "$4")
	c=$((CLIENTS / SOURCES)) q=$((OUTSTANDING / SOURCES))
	[ "$c" -ge 1 ] || c=1
	[ "$q" -ge 1 ] || q=1
	for i in $(seq 1 "$SOURCES"); do
		in_ns dnsperf -s "$1" -p "$2" -a "$3.$i" -d "$WORK/miss-$i.txt" -n 1 -c "$c" -q "$q" -l "$DURATION" -t 2 >"$WORK/dnsperf-$i.out" 2>&1 &
		out+=($!)
	done
	wait "${out[@]}"
	after=$(cpu_ticks "$4")
	for i in $(seq 1 "$SOURCES"); do
		qps=$(awk -v s="$qps" '/Queries per second/ {s += $4} END {print s}' "$WORK/dnsperf-$i.out")
		completed=$(awk -v s="$completed" '/Queries completed/ {s += $3} END {print s}' "$WORK/dnsperf-$i.out")
	done
	awk -v q="$qps" -v c="$completed" -v d=$((after - before)) -v t="$TCK" 'BEGIN { printf "%.0f %.1f\n", q, (c>0 ? d/t/c*1e6 : 0) }'
}
# metric NAME: the sum of a metric's samples on the firewall-on server.
scrape() { in_ns bash -c "exec 3<>/dev/tcp/${HTTP_ON%:*}/${HTTP_ON##*:}; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3"; }
metric() { printf '%s\n' "$1" | awk -v m="$2" '$1 == m || index($1, m"{") == 1 {s += $NF} END {printf "%.6f", s+0}'; }

for i in $(seq 1 100); do echo "hit$i.bench.test A"; done >"$WORK/hit.txt"
next=0
gen_miss() { # count -> SOURCES files of names never asked
	local i k=$(($1 / SOURCES))
	for i in $(seq 1 "$SOURCES"); do
		awk -v s="$next" -v n="$k" 'BEGIN { for (i = s; i < s + n; i++) printf "m%d.bench.test A\n", i }' >"$WORK/miss-$i.txt"
		next=$((next + k))
	done
}
per=$((NAMES / (2 * RUNS)))

declare -A RQ RC
for run in $(seq 1 "$RUNS"); do
	for name in on off; do
		case $name in on) srv=10.96.0.53 port=53 src=10.244.0.2 msrc=10.244.1 pid=$on_PID ;; off) srv=127.0.0.1 port=$OFF_PORT src=127.0.0.1 msrc=127.0.1 pid=$off_PID ;; esac
		[ "$run" = 1 ] && in_ns dnsperf -s "$srv" -p "$port" -a "$src" -d "$WORK/hit.txt" -n 1 >/dev/null 2>&1
		read -r q c < <(run_load "$srv" "$port" "$src" "$pid" "$WORK/hit.txt")
		RQ[$name-hit]+=" $q"; RC[$name-hit]+=" $c"; hq=$q
		gen_miss "$per"
		[ "$name" = on ] && m0=$(scrape) && t0=$(date +%s.%N)
		read -r q c < <(run_misses "$srv" "$port" "$msrc" "$pid")
		RQ[$name-miss]+=" $q"; RC[$name-miss]+=" $c"
		echo "round $run/$RUNS firewall $name: hits $hq qps, misses $q qps" >&2
		if [ "$name" = on ]; then
			m1=$(scrape) t1=$(date +%s.%N)
			awk -v dt="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
				-v n="$(awk -v a="$(metric "$m0" kordon_egress_programming_seconds_count)" -v b="$(metric "$m1" kordon_egress_programming_seconds_count)" 'BEGIN {print b - a}')" \
				-v s="$(awk -v a="$(metric "$m0" kordon_egress_programming_seconds_sum)" -v b="$(metric "$m1" kordon_egress_programming_seconds_sum)" 'BEGIN {print b - a}')" \
				-v a="$(awk -v a="$(metric "$m0" kordon_dnsguard_firewall_admit_seconds_count)" -v b="$(metric "$m1" kordon_dnsguard_firewall_admit_seconds_count)" 'BEGIN {print b - a}')" \
				-v g="$(awk -v a="$(metric "$m0" kordon_egress_grants_total)" -v b="$(metric "$m1" kordon_egress_grants_total)" 'BEGIN {print b - a}')" \
				-v d="$(awk -v a="$(metric "$m0" kordon_egress_elements_dropped_total)" -v b="$(metric "$m1" kordon_egress_elements_dropped_total)" 'BEGIN {print b - a}')" \
				'BEGIN { printf "  on misses: %d Admit calls, %d kernel transactions (%.0f/s), %.1f grants per transaction, %.0f us per transaction (%.0f%% of the time in the kernel), %d elements dropped at the per-source cap\n", a, n, n/dt, (n>0?g/n:0), (n>0?s/n*1e6:0), 100*s/dt, d }' >&2
		fi
	done
done

metrics=$(scrape)
# Quantiles from a Prometheus histogram's cumulative buckets (upper bounds).
quantile() { # metric q
	printf '%s\n' "$metrics" | awk -v m="$1_bucket" -v q="$2" '
		index($0, m"{") == 1 { split($0, a, "le=\""); split(a[2], b, "\""); le[++n] = b[1]; c[n] = $NF }
		END { if (n == 0) { print "n/a"; exit } total = c[n]; for (i = 1; i <= n; i++) if (c[i] >= q * total) { printf "%s", le[i]; exit } }'
}
elements=$(printf '%s\n' "$metrics" | awk '/^kordon_egress_set_elements/ {s += $NF} END {print s+0}')

echo
echo "Egress firewall benchmark: dnsperf -c $CLIENTS -q $OUTSTANDING -l $DURATION (misses: $SOURCES sources, each name once), median of $RUNS rounds, $(nproc) cores, upstream NSD"
printf '%-12s | %-5s | %10s | %10s\n' firewall load QPS "CPU us/q"
for load in hit miss; do
	for name in on off; do
		printf '%-12s | %-5s | %10s | %10s\n' "$name" "$load" "$(echo "${RQ[$name-$load]}" | median)" "$(echo "${RC[$name-$load]}" | median)"
	done
done
for load in hit miss; do
	awk -v n="$load" -v a="$(echo "${RQ[on-$load]}" | median)" -v b="$(echo "${RQ[off-$load]}" | median)" \
		'BEGIN { printf "ratio firewall on/off %-4s: QPS %.2fx\n", n, (b>0?a/b:0) }'
done
echo "answer-to-kernel (kordon_dnsguard_firewall_admit_seconds, bucket upper bounds): p50 <= $(quantile kordon_dnsguard_firewall_admit_seconds 0.5) s, p99 <= $(quantile kordon_dnsguard_firewall_admit_seconds 0.99) s"
printf '%s\n' "$metrics" | awk 'index($0, "kordon_dnsguard_firewall_admit_seconds_bucket{le=\"0.001\"}") == 1 {a = $NF} index($0, "kordon_dnsguard_firewall_admit_seconds_count") == 1 {n = $NF} END { if (n > 0) printf "Admit calls within 1 ms: %.2f%% of %d\n", 100 * a / n, n }'
echo "kernel programming (kordon_egress_programming_seconds): p50 <= $(quantile kordon_egress_programming_seconds 0.5) s, p99 <= $(quantile kordon_egress_programming_seconds 0.99) s"
echo "set elements at the end: $elements; failed Admit calls (answers SERVFAIL): $(metric "$metrics" kordon_dnsguard_firewall_admit_errors_total | cut -d. -f1), of them timeouts: $(metric "$metrics" kordon_egress_admit_timeouts_total | cut -d. -f1)"
echo "answers of the firewall-on server by rcode: $(printf '%s\n' "$metrics" | awk '/^kordon_dnsguard_queries_total/ { match($0, /rcode="[A-Z]*"/); r = substr($0, RSTART + 7, RLENGTH - 8); n[r] += $NF } END { for (r in n) printf "%s %d  ", r, n[r] }')"
