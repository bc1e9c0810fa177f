package flowlog

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/egress"
)

// nflogMessage builds the data of an NFULNL_MSG_PACKET message as the
// kernel does: nfgenmsg, then attributes.
func nflogMessage(t testing.TB, prefix string, payload []byte) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Bytes(nfulaPacketHdr, []byte{0x08, 0x00, 2, 0}) // ETH_P_IP, NF_INET_FORWARD
	ae.Uint32(nfulaMark, 0x6b000004)
	ae.Bytes(nfulaPrefix, append([]byte(prefix), 0))
	ae.Bytes(nfulaPayload, payload)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{unix.AF_INET, 0, 0, byte(egress.LogGroup)}, b...)
}

func ipv4TCP(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8], b[9] = 64, unix.IPPROTO_TCP
	copy(b[12:16], src.AsSlice())
	copy(b[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	return b
}

// ipv6 builds an IPv6 packet whose first extension headers are exts
// (each: next-header type, 8 bytes), then a UDP header.
func ipv6UDP(src, dst netip.Addr, sport, dport uint16, exts ...uint8) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	copy(b[8:24], src.AsSlice())
	copy(b[24:40], dst.AsSlice())
	next := &b[6]
	for _, e := range exts {
		*next = e
		h := make([]byte, 8)
		b = append(b, h...)
		next = &b[len(b)-8]
	}
	*next = unix.IPPROTO_UDP
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp, sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	return append(b, udp...)
}

func TestParseNFLOG(t *testing.T) {
	t.Parallel()
	src4, dst4 := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("198.51.100.7")
	src6, dst6 := netip.MustParseAddr("fd00:244:1::2"), netip.MustParseAddr("2001:db8:100::7")
	frag4 := ipv4TCP(src4, dst4, 1, 2)
	binary.BigEndian.PutUint16(frag4[6:], 100) // a later fragment: no ports
	for _, tc := range []struct {
		name    string
		payload []byte
		want    logPacket
		wantErr bool
	}{
		{name: "ipv4 tcp", payload: ipv4TCP(src4, dst4, 40000, 6379),
			want: logPacket{Prefix: egress.PrefixBlockPolicy, HWProto: 0x0800, Hook: 2, Mark: 0x6b000004, Proto: unix.IPPROTO_TCP, Src: src4, Dst: dst4, SPort: 40000, DPort: 6379}},
		{name: "ipv4 later fragment", payload: frag4,
			want: logPacket{Prefix: egress.PrefixBlockPolicy, HWProto: 0x0800, Hook: 2, Mark: 0x6b000004, Proto: unix.IPPROTO_TCP, Src: src4, Dst: dst4}},
		{name: "ipv6 udp", payload: ipv6UDP(src6, dst6, 5353, 853),
			want: logPacket{Prefix: egress.PrefixBlockPolicy, HWProto: 0x0800, Hook: 2, Mark: 0x6b000004, Proto: unix.IPPROTO_UDP, Src: src6, Dst: dst6, SPort: 5353, DPort: 853}},
		{name: "ipv6 udp after hop-by-hop and destination options", payload: ipv6UDP(src6, dst6, 1000, 53, unix.IPPROTO_HOPOPTS, unix.IPPROTO_DSTOPTS),
			want: logPacket{Prefix: egress.PrefixBlockPolicy, HWProto: 0x0800, Hook: 2, Mark: 0x6b000004, Proto: unix.IPPROTO_UDP, Src: src6, Dst: dst6, SPort: 1000, DPort: 53}},
		{name: "ipv6 first fragment", payload: ipv6UDP(src6, dst6, 1000, 53, unix.IPPROTO_FRAGMENT),
			want: logPacket{Prefix: egress.PrefixBlockPolicy, HWProto: 0x0800, Hook: 2, Mark: 0x6b000004, Proto: unix.IPPROTO_UDP, Src: src6, Dst: dst6, SPort: 1000, DPort: 53}},
		{name: "ipv4 cut short", payload: ipv4TCP(src4, dst4, 1, 2)[:19], wantErr: true},
		{name: "ipv6 cut short", payload: ipv6UDP(src6, dst6, 1, 2)[:39], wantErr: true},
		{name: "not ip", payload: []byte{0x00, 1, 2, 3}, wantErr: true},
		{name: "no payload", payload: nil, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseNFLOG(nflogMessage(t, egress.PrefixBlockPolicy, tc.payload))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error, parsed %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
	for _, bad := range [][]byte{nil, {1, 2}, {2, 0, 0, 107, 0xff, 0xff}, {2, 0, 0, 107, 4, 0, 10, 0}} {
		if _, err := parseNFLOG(bad); err == nil {
			t.Errorf("parseNFLOG(%x): no error", bad)
		}
	}
}

// FuzzParseNFLOG: the parser takes kernel bytes; no input may panic it,
// and what it accepts has valid addresses of one family.
func FuzzParseNFLOG(f *testing.F) {
	src4, dst4 := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("198.51.100.7")
	src6, dst6 := netip.MustParseAddr("fd00:244:1::2"), netip.MustParseAddr("2001:db8:100::7")
	f.Add(nflogMessage(f, egress.PrefixBlockPolicy, ipv4TCP(src4, dst4, 1, 2)))
	f.Add(nflogMessage(f, egress.PrefixBlockDoT, ipv6UDP(src6, dst6, 3, 853, unix.IPPROTO_HOPOPTS, unix.IPPROTO_FRAGMENT)))
	f.Add(nflogMessage(f, "", []byte{0x4f}))
	f.Add([]byte{2, 0, 0, 107})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseNFLOG(b)
		if err != nil {
			return
		}
		if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
			t.Fatalf("accepted packet with bad addresses: %+v", p)
		}
	})
}

func TestParseL3Truncated(t *testing.T) {
	t.Parallel()
	// Every prefix of valid packets parses or errors, never panics.
	full := [][]byte{
		ipv4TCP(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1, 2),
		ipv6UDP(netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 1, 2, unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING, unix.IPPROTO_AH),
	}
	for _, b := range full {
		for i := range len(b) + 1 {
			var p logPacket
			_ = parseL3(b[:i], &p)
		}
	}
}
