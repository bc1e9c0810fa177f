#!/usr/bin/env bash
# Installs the Debian packages the tests use (real DNS clients and
# tunneling tools, protoc, chromium). Idempotent: does nothing when they are present.
set -euo pipefail
need=()
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v kdig >/dev/null || need+=(knot-dnsutils)
command -v dns2tcpd >/dev/null || need+=(dns2tcp)
command -v iodined >/dev/null || need+=(iodine)
# unbound writes the dnstap file that kordon detect replay's test reads.
command -v unbound >/dev/null || [ -x /usr/sbin/unbound ] || need+=(unbound)
command -v ip >/dev/null || need+=(iproute2)
# protoc regenerates identity/issuancepb (make generate); the staleness
# test needs it and the well-known types it ships (libprotobuf-dev).
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
# dnsguard's dnstap test: libfstrm's receiver writes the stream, dnstap-ldns decodes it.
command -v fstrm_capture >/dev/null || need+=(fstrm-bin)
command -v dnstap-ldns >/dev/null || need+=(dnstap-ldns)
# The alert feed's syslog sink is tested against rsyslog (TLS through its gtls driver).
command -v rsyslogd >/dev/null || [ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need+=(rsyslog-gnutls)
# The web console's test drives a headless Chromium (chromedp).
command -v chromium >/dev/null || need+=(chromium)
# promtool (in Debian's prometheus package) checks and unit-tests the
# monitoring pack's rules (manifests/monitoring).
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
