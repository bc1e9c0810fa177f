package main

import "github.com/spf13/pflag"

// dnstapFlag is --dnstap of kordon dnsguard, node and dev: where the
// resolver sends dnstap (dnsguard.Config.Dnstap; empty: off).
type dnstapFlag string

func (f *dnstapFlag) register(fl *pflag.FlagSet) {
	fl.StringVar((*string)(f), "dnstap", "", `send every query and its reply as dnstap (CLIENT_QUERY, CLIENT_RESPONSE) over Frame Streams to "unix:/run/dnstap.sock" or "tcp:host:port"; never slows DNS (drops are counted in kordon_dnsguard_dnstap_dropped_total), reconnects every second (empty: off)`)
}
