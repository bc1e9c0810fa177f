package dnsguard

import (
	_ "embed"
	"strings"
)

// dohHosts is doh-hosts.txt: well-known public DNS-over-HTTPS resolver
// names, in hosts format (exact names).
//
//go:embed doh-hosts.txt
var dohHosts string

// dohBlockedText is the EDE text of a name on the DoH list.
const dohBlockedText = "well-known DNS-over-HTTPS resolver (doh list): use the cluster resolver"

// DefaultDoHList returns the built-in list of well-known public
// DNS-over-HTTPS resolver names (doh-hosts.txt, exact names), what a nil
// Config.DoHList means. Each call parses a fresh copy.
func DefaultDoHList() *Blocklist {
	b, _, err := ParseBlocklist(strings.NewReader(dohHosts))
	if err != nil {
		// Only a line over 1 MiB fails to scan; TestDefaultDoHList reads this file.
		panic("dnsguard: built-in doh-hosts.txt: " + err.Error())
	}
	return b
}
