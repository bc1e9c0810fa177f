#!/usr/bin/env bash
# bench/dns/run.sh: dnsguard side by side with CoreDNS (forward + cache) and
# unbound (forward only), all forwarding to NSD on loopback, measured with
# dnsperf in ONE run, on a cache-hit and a cache-miss workload.
#
# Prints QPS, server CPU per query (utime+stime from /proc), p50/p99 latency
# at a fixed rate, and dnsguard's ratios to each peer. dnsguard runs with
# 1,000 EgressPolicy rules and full JSON query logging to a file.
#
#   bench/dns/run.sh                 # defaults: 3 rounds of 10 s per measurement
#   DURATION=5 RUNS=1 RATE=2000 bench/dns/run.sh
#   PIN=1 bench/dns/run.sh           # servers on CPU 1, dnsperf and NSD on CPU 0
#
# With RUNS > 1 the servers take turns round after round (so drift on a
# shared machine hits them alike) and the table shows each figure's
# median over the rounds.
#
# Installs its peers if missing: dnsperf, nsd, unbound (apt) and CoreDNS
# v1.12.1 (go install into $(go env GOPATH)/kordon-cache, ~5 min cold).
# All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/dns/lib.sh
. bench/dns/lib.sh
# PIN=1 gives the servers CPU 1 and dnsperf + NSD CPU 0 (taskset), so the
# server under test never competes with the load generator for a core.
PIN=${PIN:-0}
SRV=() GEN=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then SRV=(taskset -c 1); GEN=(taskset -c 0); fi
RATE=${RATE:-2000}
CACHE=$(go env GOPATH)/kordon-cache
COREDNS=$CACHE/coredns-v1.12.1/coredns

install_missing dnsperf:dnsperf nsd:nsd unbound:unbound
if [ ! -x "$COREDNS" ]; then
  echo "installing CoreDNS v1.12.1 into $CACHE (one time, ~5 min)"
  mkdir -p "$(dirname "$COREDNS")"
  GOBIN=$(dirname "$COREDNS") go install github.com/coredns/coredns@v1.12.1
fi
make -s build >/dev/null
KORDON=$PWD/bin/kordon

bench_work dns

NSD_PORT=$(freeport); DG_PORT=$(freeport); CD_PORT=$(freeport); UB_PORT=$(freeport)

# --- NSD upstream: a wildcard zone, response rate limiting off.
bench_zone "$WORK"
nsd_conf "$WORK" "$NSD_PORT"
"${GEN[@]}" /usr/sbin/nsd -d -c "$WORK/nsd.conf" >"$WORK/nsd.log" 2>&1 & PIDS+=($!)

# --- dnsguard: 1,000 rules (100 policies x 10 patterns), logging on.
bench_policies "$WORK"
"${SRV[@]}" "$KORDON" dnsguard --dns-listen 127.0.0.1:$DG_PORT --upstream 127.0.0.1:$NSD_PORT \
  --workloads "$WORK/workloads.yaml" --policies "$WORK/policies" --query-log "$WORK/query.log" \
  --cache-size 2000000 >"$WORK/dnsguard.out" 2>&1 & DG_PID=$!; PIDS+=($DG_PID)

# --- CoreDNS: forward + cache.
cat > "$WORK/Corefile" <<C
.:$CD_PORT {
  bind 127.0.0.1
  forward . 127.0.0.1:$NSD_PORT
  cache 3600
}
C
"${SRV[@]}" "$COREDNS" -conf "$WORK/Corefile" -quiet >"$WORK/coredns.log" 2>&1 & CD_PID=$!; PIDS+=($CD_PID)

# --- unbound: forward only, 2 threads.
cat > "$WORK/unbound.conf" <<U
server:
  interface: 127.0.0.1@$UB_PORT
  port: $UB_PORT
  num-threads: 2
  username: ""
  chroot: ""
  directory: "$WORK"
  pidfile: "$WORK/unbound.pid"
  use-syslog: no
  logfile: ""
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  msg-cache-size: 256m
  rrset-cache-size: 512m
  module-config: "iterator"
  qname-minimisation: no
  do-ip6: no
  local-zone: "test." nodefault
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@$NSD_PORT
U
"${SRV[@]}" /usr/sbin/unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 & UB_PID=$!; PIDS+=($UB_PID)

wait_dns nsd $NSD_PORT; wait_dns dnsguard $DG_PORT; wait_dns coredns $CD_PORT; wait_dns unbound $UB_PORT


# latency PORT DATAFILE -> "p50_ms p99_ms" at a fixed rate
run_latency() {
  "${GEN[@]}" dnsperf -s 127.0.0.1 -p "$1" -d "$2" -c 4 -Q "$RATE" -l 5 -t 2 -v 2>/dev/null |
    awk '/^> / {print $NF*1000}' | sort -n |
    awk '{a[NR]=$1} END { if (NR==0) {print "n/a n/a"; exit} printf "%.2f %.2f\n", a[int(NR*0.5)+1], a[int(NR*0.99)+1] }'
}

# Cache-hit workload: 100 names, warmed first. Cache-miss workload: names
# never asked before (a distinct prefix per server and phase).
for i in $(seq 1 100); do echo "hit$i.bench.test A"; done > "$WORK/hit.txt"
gen_miss() { awk -v p="$1" 'BEGIN { for (i = 0; i < 1500000; i++) printf "%s%d.bench.test A\n", p, i }' > "$2"; }


declare -A QPS CPU P50 P99 RQ RC
for run in $(seq 1 "$RUNS"); do
  for name in dnsguard coredns unbound; do
    case $name in dnsguard) port=$DG_PORT pid=$DG_PID ;; coredns) port=$CD_PORT pid=$CD_PID ;; unbound) port=$UB_PORT pid=$UB_PID ;; esac
    [ "$run" = 1 ] && dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/hit.txt" -n 1 >/dev/null 2>&1 # warm
    read -r q c < <(dnsperf_load "$port" "$pid" "$WORK/hit.txt")
    RQ[$name-hit]+=" $q"; RC[$name-hit]+=" $c"; hq=$q
    gen_miss "m$run-$name-" "$WORK/miss-$name.txt"
    read -r q c < <(dnsperf_load "$port" "$pid" "$WORK/miss-$name.txt")
    RQ[$name-miss]+=" $q"; RC[$name-miss]+=" $c"
    if [ "$run" = 1 ]; then
      read -r P50[$name-hit] P99[$name-hit] < <(run_latency "$port" "$WORK/hit.txt")
      gen_miss "l-$name-" "$WORK/lat-$name.txt"
      read -r P50[$name-miss] P99[$name-miss] < <(run_latency "$port" "$WORK/lat-$name.txt")
    fi
    rm -f "$WORK/miss-$name.txt" "$WORK/lat-$name.txt"
    echo "round $run/$RUNS $name: hits $hq qps, misses $q qps" >&2
  done
done
medians

echo
echo "DNS benchmark: dnsperf -c $CLIENTS -q $OUTSTANDING -l $DURATION, median of $RUNS rounds; latency at $RATE qps; upstream NSD; $(nproc) cores${SRV:+; servers pinned to CPU 1, dnsperf and NSD to CPU 0}"
echo "dnsguard: 1,000 EgressPolicy rules, JSON query log on ($(wc -l < "$WORK/query.log") lines written)"
printf '%-9s | %-6s | %10s | %10s | %8s | %8s\n' server load QPS "CPU us/q" "p50 ms" "p99 ms"
for load in hit miss; do
  for name in dnsguard coredns unbound; do
    printf '%-9s | %-6s | %10s | %10s | %8s | %8s\n' "$name" "$load" "${QPS[$name-$load]}" "${CPU[$name-$load]}" "${P50[$name-$load]}" "${P99[$name-$load]}"
  done
done
echo
for load in hit miss; do
  for peer in coredns unbound; do
    awk -v n="$load" -v p="$peer" -v a="${QPS[dnsguard-$load]}" -v b="${QPS[$peer-$load]}" -v ca="${CPU[dnsguard-$load]}" -v cb="${CPU[$peer-$load]}" \
      'BEGIN { printf "ratio dnsguard/%-7s %-4s: QPS %.2fx, CPU per query %.2fx (queries per CPU-second %.2fx)\n", p, n, (b>0?a/b:0), (cb>0?ca/cb:0), (ca>0?cb/ca:0) }'
  done
done
if [ ${#SRV[@]} -eq 0 ]; then
  echo "(dnsperf shares the $(nproc) cores with the server: a server cannot go faster than dnsperf can"
  echo " send; PIN=1 separates them. Queries per CPU-second, 1/CPU per query, is each server's own capacity.)"
else
  echo "(each server had one core to itself; queries per CPU-second, 1/CPU per query, is its own capacity.)"
fi
