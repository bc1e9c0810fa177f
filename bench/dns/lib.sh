# bench/dns/lib.sh: what the DNS benchmarks share (sourced, not run).

# The load every benchmark applies (override in the environment):
# DURATION s per measurement, RUNS rounds, dnsperf CLIENTS x OUTSTANDING.
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-100}

# nsd_conf DIR PORT: an NSD config serving DIR/bench.test.zone on
# 127.0.0.1:PORT with response rate limiting off, written to DIR/nsd.conf.
nsd_conf() {
	cat >"$1/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$2
  port: $2
  username: ""
  chroot: ""
  zonesdir: "$1"
  database: ""
  pidfile: "$1/nsd.pid"
  xfrdfile: "$1/xfrd.state"
  zonelistfile: "$1/zone.list"
  server-count: 1
  rrl-ratelimit: 0
  hide-version: yes
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: bench.test
  zonefile: bench.test.zone
CONF
}

# cpu_ticks PID: user+system CPU of a process, in clock ticks (TCK per s).
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

# median: the median of the numbers on stdin (space or newline separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END { print a[int((NR+1)/2)] }'; }

# install_missing CMD:PACKAGE...: apt-installs the packages whose command
# is neither on PATH nor in /usr/sbin.
install_missing() {
	local need=() c
	for c in "$@"; do
		command -v "${c%%:*}" >/dev/null || [ -x "/usr/sbin/${c%%:*}" ] || need+=("${c#*:}")
	done
	if [ ${#need[@]} -gt 0 ]; then
		echo "installing ${need[*]}"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
}

# freeport: a free UDP port on 127.0.0.1.
freeport() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_zone DIR: DIR/bench.test.zone, a wildcard zone for NSD.
bench_zone() {
	cat >"$1/bench.test.zone" <<ZONE
\$ORIGIN bench.test.
\$TTL 3600
@ IN SOA ns.bench.test. h.bench.test. 1 3600 600 86400 3600
@ IN NS ns.bench.test.
ns IN A 127.0.0.1
* IN A 192.0.2.1
ZONE
}

# bench_policies DIR: DIR/workloads.yaml (the client 127.0.0.1) and
# DIR/policies/egress.yaml, 1,000 rules (100 policies x 10 patterns).
bench_policies() {
	mkdir -p "$1/policies"
	cat >"$1/workloads.yaml" <<W
- {name: bench-client, namespace: bench, serviceAccount: bench, labels: {app: bench}, ips: [127.0.0.1]}
W
	{
		for i in $(seq 0 99); do
			printf -- '---\napiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: p%d, namespace: bench}\nspec:\n  selector: {matchLabels: {app: bench}}\n  allow:\n' "$i"
			for j in $(seq 0 8); do printf '  - "*.svc%d-%d.example"\n' "$i" "$j"; done
			printf '  - "*.bench.test"\n'
		done
	} >"$1/policies/egress.yaml"
}

# wait_dns NAME PORT: until 127.0.0.1:PORT answers ready.bench.test (WORK's
# logs printed and exit 1 after 20 s).
wait_dns() {
	for _ in $(seq 1 100); do
		if dig +short +tries=1 +time=1 @127.0.0.1 -p "$2" ready.bench.test A 2>/dev/null | grep -q 192.0.2.1; then return 0; fi
		sleep 0.2
	done
	echo "$1 on port $2 did not become ready; last answer:"
	dig +tries=1 +time=2 @127.0.0.1 -p "$2" ready.bench.test A || true
	echo "logs:"
	for f in "$WORK"/*.log "$WORK"/*.out; do echo "== $f"; tail -5 "$f"; done
	exit 1
}

# dnsperf_load PORT PID DATAFILE -> "qps us_per_query": dnsperf (under
# "${GEN[@]}" if set) for DURATION s with CLIENTS and OUTSTANDING, and the
# server PID's CPU per completed query.
dnsperf_load() {
	local before after out qps completed
	before=$(cpu_ticks "$2")
	out=$("${GEN[@]}" dnsperf -s 127.0.0.1 -p "$1" -d "$3" -c "$CLIENTS" -q "$OUTSTANDING" -l "$DURATION" -t 2 2>&1)
	after=$(cpu_ticks "$2")
	qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
	completed=$(echo "$out" | awk '/Queries completed/ {print $3}')
	awk -v q="$qps" -v c="$completed" -v d=$((after - before)) -v t="$TCK" 'BEGIN { printf "%.0f %.1f\n", q, (c>0 ? d/t/c*1e6 : 0) }'
}

# bench_work NAME: WORK, a temporary folder, and PIDS, processes killed
# (then WORK removed) at exit.
bench_work() {
	WORK=$(mktemp -d "/tmp/kordon-bench-$1.XXXXXX")
	PIDS=()
	trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# medians: QPS[k] and CPU[k] (associative arrays the caller declared), the
# medians of the rounds listed in RQ[k] and RC[k].
medians() {
	local k
	for k in "${!RQ[@]}"; do
		QPS[$k]=$(echo "${RQ[$k]}" | median)
		CPU[$k]=$(echo "${RC[$k]}" | median)
	done
}
