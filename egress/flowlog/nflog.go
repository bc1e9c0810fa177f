package flowlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/egress"
)

// NFLOG over nfnetlink (include/uapi/linux/netfilter/nfnetlink_log.h).
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaCfgTimeout = 4
	nfulaCfgQThresh = 5

	nfulnlCfgCmdBind     = 1
	nfulnlCfgCmdPFBind   = 3
	nfulnlCfgCmdPFUnbind = 4

	nfulnlCopyPacket = 2

	nfulaPacketHdr = 1
	nfulaMark      = 2
	nfulaPayload   = 9
	nfulaPrefix    = 10
)

// errGroupBusy: another socket (another agent) holds the NFLOG group.
var errGroupBusy = errors.New("group held by another process")

// nflogGroup is kordon's log group.
const nflogGroup = egress.LogGroup

// nflogCopyRange is how much of each packet the kernel copies: an IPv6
// header with a few extension headers and the transport ports.
const nflogCopyRange = 128

// nflogReadBuffer is the NFLOG socket's receive buffer.
const nflogReadBuffer = 2 << 20

// nflogConn is a socket bound to one NFLOG group.
type nflogConn struct{ c *netlink.Conn }

// dialNFLOG binds group in namespace nsfd and asks for the first
// nflogCopyRange bytes of each packet, delivered within 100 ms.
func dialNFLOG(nsfd int, group uint16) (*nflogConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsfd})
	if err != nil {
		return nil, fmt.Errorf("flowlog: nflog: %w", err)
	}
	n := &nflogConn{c: c}
	if err := setReadBuffer(c, nflogReadBuffer); err != nil {
		c.Close()
		return nil, fmt.Errorf("flowlog: nflog: %w", err)
	}
	// As libnetfilter_log does: PF_UNBIND and PF_BIND per family (no-ops
	// since Linux 3.17, needed before), then bind the group and set it up.
	for _, pf := range []netfilter.ProtoFamily{netfilter.ProtoIPv4, netfilter.ProtoIPv6} {
		_ = n.config(pf, 0, cmdAttr(nfulnlCfgCmdPFUnbind))
		if err := n.config(pf, 0, cmdAttr(nfulnlCfgCmdPFBind)); err != nil {
			c.Close()
			return nil, fmt.Errorf("flowlog: nflog: pf bind: %w", err)
		}
	}
	if err := n.config(netfilter.ProtoUnspec, group, cmdAttr(nfulnlCfgCmdBind)); err != nil {
		c.Close()
		if errors.Is(err, unix.EPERM) {
			// nfnetlink_log answers EPERM when another socket owns the
			// group (we hold CAP_NET_ADMIN, or PF_BIND had failed).
			return nil, fmt.Errorf("flowlog: nflog: bind group %d: %w", group, errGroupBusy)
		}
		return nil, fmt.Errorf("flowlog: nflog: bind group %d: %w", group, err)
	}
	mode := make([]byte, 6) // struct nfulnl_msg_config_mode
	binary.BigEndian.PutUint32(mode, nflogCopyRange)
	mode[4] = nfulnlCopyPacket
	attrs := []netfilter.Attribute{
		{Type: nfulaCfgMode, Data: mode},
		{Type: nfulaCfgTimeout, Data: netfilter.Uint32Bytes(10)}, // 1/100 s
		{Type: nfulaCfgQThresh, Data: netfilter.Uint32Bytes(32)},
	}
	if err := n.config(netfilter.ProtoUnspec, group, attrs...); err != nil {
		c.Close()
		return nil, fmt.Errorf("flowlog: nflog: configure group %d: %w", group, err)
	}
	return n, nil
}

func cmdAttr(cmd uint8) netfilter.Attribute {
	return netfilter.Attribute{Type: nfulaCfgCmd, Data: []byte{cmd}}
}

// config sends one NFULNL_MSG_CONFIG request and waits for its ack.
func (n *nflogConn) config(pf netfilter.ProtoFamily, group uint16, attrs ...netfilter.Attribute) error {
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysULOG, MessageType: nfulnlMsgConfig,
		Family: pf, ResourceID: group, Flags: netlink.Request | netlink.Acknowledge,
	}, attrs)
	if err != nil {
		return err
	}
	_, err = n.c.Execute(m)
	return err
}

// receive blocks for the next batch and parses its packets; messages that
// do not parse are skipped.
func (n *nflogConn) receive(pkts []logPacket) ([]logPacket, error) {
	msgs, err := n.c.Receive()
	if err != nil {
		return pkts, err
	}
	want := netlink.HeaderType(uint16(netfilter.NFSubsysULOG)<<8 | nfulnlMsgPacket)
	for _, m := range msgs {
		if m.Header.Type != want {
			continue
		}
		if p, err := parseNFLOG(m.Data); err == nil {
			pkts = append(pkts, p)
		}
	}
	return pkts, nil
}

func (n *nflogConn) Close() error { return n.c.Close() }

// logPacket is one logged packet: the prefix of the rule that logged it
// and the addresses and ports of its first bytes.
type logPacket struct {
	Prefix  string
	HWProto uint16
	Hook    uint8
	Mark    uint32
	Proto   uint8
	Src     netip.Addr
	Dst     netip.Addr
	SPort   uint16
	DPort   uint16
}

var (
	errShort   = errors.New("flowlog: nflog: message too short")
	errPayload = errors.New("flowlog: nflog: payload is not IPv4 or IPv6")
)

// parseNFLOG parses the data of an NFULNL_MSG_PACKET message (nfgenmsg and
// attributes), as the kernel sends it. Any input is safe: it never panics.
func parseNFLOG(b []byte) (logPacket, error) {
	var p logPacket
	if len(b) < 4 {
		return p, errShort
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return p, fmt.Errorf("flowlog: nflog: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	var payload []byte
	for ad.Next() {
		data := ad.Bytes()
		switch ad.Type() {
		case nfulaPacketHdr: // struct nfulnl_msg_packet_hdr
			if len(data) >= 3 {
				p.HWProto, p.Hook = binary.BigEndian.Uint16(data), data[2]
			}
		case nfulaMark:
			if len(data) == 4 {
				p.Mark = binary.BigEndian.Uint32(data)
			}
		case nfulaPrefix: // NUL-terminated
			for i, c := range data {
				if c == 0 {
					data = data[:i]
					break
				}
			}
			p.Prefix = string(data)
		case nfulaPayload:
			payload = data
		}
	}
	if err := ad.Err(); err != nil {
		return p, fmt.Errorf("flowlog: nflog: %w", err)
	}
	if err := parseL3(payload, &p); err != nil {
		return p, err
	}
	return p, nil
}

// parseL3 reads addresses, protocol and ports from the first bytes of an
// IP packet. Ports stay 0 for later fragments and protocols without ports.
func parseL3(b []byte, p *logPacket) error {
	if len(b) < 1 {
		return errPayload
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return errPayload
		}
		p.Proto = b[9]
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 { // not the first fragment
			return nil
		}
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return errPayload
		}
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, rest := b[6], b[40:]
		// Walk at most 8 extension headers.
	walk:
		for range 8 {
			switch next {
			case unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING, unix.IPPROTO_DSTOPTS:
				if len(rest) < 8 {
					p.Proto = next
					return nil
				}
				n := (int(rest[1]) + 1) * 8
				if len(rest) < n {
					p.Proto = next
					return nil
				}
				next, rest = rest[0], rest[n:]
			case unix.IPPROTO_FRAGMENT:
				if len(rest) < 8 {
					p.Proto = next
					return nil
				}
				if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
					p.Proto = rest[0]
					return nil
				}
				next, rest = rest[0], rest[8:]
			case unix.IPPROTO_AH:
				if len(rest) < 8 {
					p.Proto = next
					return nil
				}
				n := (int(rest[1]) + 2) * 4
				if len(rest) < n {
					p.Proto = next
					return nil
				}
				next, rest = rest[0], rest[n:]
			default:
				break walk
			}
		}
		p.Proto, l4 = next, rest
	default:
		return errPayload
	}
	switch p.Proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP, unix.IPPROTO_UDPLITE:
		if len(l4) >= 4 {
			p.SPort = binary.BigEndian.Uint16(l4[0:2])
			p.DPort = binary.BigEndian.Uint16(l4[2:4])
		}
	}
	return nil
}
