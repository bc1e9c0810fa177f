# bench/dns/lib.sh: what the DNS benchmarks share (sourced, not run).

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
