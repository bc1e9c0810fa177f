#!/usr/bin/env bash
# bench/dns/dnstap.sh: the cost of dnstap next to the cost of the JSON
# query log, in ONE run: three `kordon dnsguard` processes with the same
# 1,000-rule policy set and upstream (NSD on loopback), taking turns under
# dnsperf on a cache-hit and a cache-miss workload:
#
#   base     neither the query log nor dnstap
#   querylog JSON query log to a file (as bench/dns/run.sh runs it)
#   dnstap   dnstap over a Unix socket to fstrm_capture writing a file
#
# and prints QPS, CPU per query and each one's ratio to base.
#
#   bench/dns/dnstap.sh                  # 3 rounds of 10 s
#   DURATION=5 RUNS=1 bench/dns/dnstap.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/dns/lib.sh
. bench/dns/lib.sh

install_missing dnsperf:dnsperf nsd:nsd fstrm_capture:fstrm-bin
make -s build >/dev/null
KORDON=$PWD/bin/kordon

bench_work dnstap
GEN=()

NSD_PORT=$(freeport)

bench_zone "$WORK"
nsd_conf "$WORK" "$NSD_PORT"
/usr/sbin/nsd -d -c "$WORK/nsd.conf" >"$WORK/nsd.log" 2>&1 &
PIDS+=($!)

bench_policies "$WORK"

fstrm_capture -t protobuf:dnstap.Dnstap -u "$WORK/tap.sock" -w "$WORK/tap.fstrm" >"$WORK/fstrm.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do [ -S "$WORK/tap.sock" ] && break; sleep 0.1; done

declare -A PORT PID
TAP_METRICS=$(freeport)
NAMES=(base querylog dnstap)
for name in "${NAMES[@]}"; do
	PORT[$name]=$(freeport)
	extra=()
	case $name in
	querylog) extra=(--query-log "$WORK/query.log") ;;
	dnstap) extra=(--dnstap "unix:$WORK/tap.sock" --metrics-listen 127.0.0.1:$TAP_METRICS) ;;
	esac
	"$KORDON" dnsguard --dns-listen 127.0.0.1:${PORT[$name]} --upstream 127.0.0.1:$NSD_PORT --node bench \
		--workloads "$WORK/workloads.yaml" --policies "$WORK/policies" --cache-size 2000000 \
		"${extra[@]}" >"$WORK/$name.out" 2>&1 &
	PID[$name]=$!
	PIDS+=($!)
done

wait_dns nsd "$NSD_PORT"
for name in "${NAMES[@]}"; do wait_dns "$name" "${PORT[$name]}"; done

for i in $(seq 1 100); do echo "hit$i.bench.test A"; done >"$WORK/hit.txt"
gen_miss() { awk -v p="$1" 'BEGIN { for (i = 0; i < 1500000; i++) printf "%s%d.bench.test A\n", p, i }' >"$2"; }

declare -A RQ RC QPS CPU
for run in $(seq 1 "$RUNS"); do
	for name in "${NAMES[@]}"; do
		port=${PORT[$name]} pid=${PID[$name]}
		[ "$run" = 1 ] && dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/hit.txt" -n 1 >/dev/null 2>&1
		read -r q c < <(dnsperf_load "$port" "$pid" "$WORK/hit.txt")
		RQ[$name-hit]+=" $q"
		RC[$name-hit]+=" $c"
		hq=$q
		gen_miss "m$run-$name-" "$WORK/miss.txt"
		read -r q c < <(dnsperf_load "$port" "$pid" "$WORK/miss.txt")
		RQ[$name-miss]+=" $q"
		RC[$name-miss]+=" $c"
		rm -f "$WORK/miss.txt"
		echo "round $run/$RUNS $name: hits $hq qps, misses $q qps" >&2
	done
done
medians
tapm=$(curl -s "127.0.0.1:$TAP_METRICS/metrics")
sent=$(echo "$tapm" | awk '/^kordon_dnsguard_dnstap_messages_total/ {printf "%.0f", $2}')
dropped=$(echo "$tapm" | awk '/^kordon_dnsguard_dnstap_dropped_total/ {printf "%.0f", $2}')

echo
echo "dnstap vs query log: dnsperf -c $CLIENTS -q $OUTSTANDING -l $DURATION, median of $RUNS rounds; upstream NSD; $(nproc) cores, dnsperf sharing them"
echo "query log: $(wc -l <"$WORK/query.log") lines; dnstap: $sent messages sent, $dropped queries' messages dropped"
printf '%-9s | %-5s | %10s | %10s | %12s | %14s\n' server load QPS "CPU us/q" "QPS vs base" "CPU/q vs base"
for load in hit miss; do
	for name in "${NAMES[@]}"; do
		awk -v n="$name" -v l="$load" -v q="${QPS[$name-$load]}" -v c="${CPU[$name-$load]}" -v bq="${QPS[base-$load]}" -v bc="${CPU[base-$load]}" \
			'BEGIN { printf "%-9s | %-5s | %10s | %10s | %11.2fx | %13.2fx\n", n, l, q, c, (bq>0?q/bq:0), (bc>0?c/bc:0) }'
	done
done
