// Package conntrack is the appliance's only access to the kernel's conntrack table: it
// dumps entries, follows their events, and injects mirrored entries NAT-correct so that a
// standby's kernel carries on the connections of a failed active.
//
// Everything here is bound to the network namespace that was current when a Table or
// Listener was created: netlink sockets keep the namespace they were opened in.
package conntrack

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// TCP conntrack states as the kernel numbers them (enum tcp_conntrack in
// include/uapi/linux/netfilter/nf_conntrack_tcp.h), the values of Flow.TCPState.
const (
	TCPStateNone        uint8 = 0
	TCPStateSynSent     uint8 = 1
	TCPStateSynRecv     uint8 = 2
	TCPStateEstablished uint8 = 3
	TCPStateFinWait     uint8 = 4
	TCPStateCloseWait   uint8 = 5
	TCPStateLastAck     uint8 = 6
	TCPStateTimeWait    uint8 = 7
	TCPStateClose       uint8 = 8
	TCPStateSynSent2    uint8 = 9
)

// Status bits of Flow.Status (enum ip_conntrack_status in
// include/uapi/linux/netfilter/nf_conntrack_common.h).
const (
	StatusExpected     uint32 = 1 << 0
	StatusSeenReply    uint32 = 1 << 1
	StatusAssured      uint32 = 1 << 2
	StatusConfirmed    uint32 = 1 << 3
	StatusSrcNAT       uint32 = 1 << 4
	StatusDstNAT       uint32 = 1 << 5
	StatusSeqAdjust    uint32 = 1 << 6
	StatusSrcNATDone   uint32 = 1 << 7
	StatusDstNATDone   uint32 = 1 << 8
	StatusDying        uint32 = 1 << 9
	StatusFixedTimeout uint32 = 1 << 10
)

// settableStatus are the status bits that Inject carries over from a mirrored flow. The
// kernel keeps every other bit to itself (IPS_UNCHANGEABLE_MASK), sets the NAT bits from
// the NAT setup, and only lets SEEN_REPLY and ASSURED be set, never cleared
// (nf_ct_change_status_common in net/netfilter/nf_conntrack_netlink.c).
const settableStatus = StatusSeenReply | StatusAssured

// Tuple is one direction of a connection.
type Tuple struct{ Src, Dst netip.AddrPort }

// String formats the tuple as "src->dst", for example "10.0.0.1:5000->10.0.0.10:3306".
func (t Tuple) String() string { return t.Src.String() + "->" + t.Dst.String() }

// inverse returns the tuple of the other direction when no NAT happens.
func (t Tuple) inverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src} }

// Flow is one conntrack entry as the appliance mirrors it. It is a plain value: copies
// are independent and any goroutine may use them.
//
// A TCP flow's TCPState is TCPStateNone when it is not known: the kernel's update event
// for a status change alone (SEEN_REPLY, ASSURED) carries no protocol info
// (ctnetlink_conntrack_event sends it only with IPCT_PROTOINFO), and no confirmed entry
// is ever in NONE. Inject leaves an existing entry's state alone for such a flow, and
// creates a missing one ESTABLISHED, as the kernel's own mid-stream pickup does.
type Flow struct {
	Proto    uint8  // unix.IPPROTO_TCP or unix.IPPROTO_UDP; other protocols are not dumped or delivered
	Orig     Tuple  // original direction: client -> virtual address
	Reply    Tuple  // reply direction as the kernel holds it, i.e. NATed: pool member -> SNAT address
	TCPState uint8  // TCPState*; TCPStateNone when not TCP or not known (see below)
	Timeout  uint32 // seconds left
	Mark     uint32
	Status   uint32 // Status* bits as the kernel reports them
	ID       uint32 // kernel entry id (local to this kernel)
}

// DNAT returns the destination the original direction is translated to (Reply.Src) and
// whether it differs from Orig.Dst. A flow without a reply address has no NAT.
func (f Flow) DNAT() (netip.AddrPort, bool) {
	if !f.Reply.Src.Addr().IsValid() {
		return f.Orig.Dst, false
	}
	return f.Reply.Src, f.Reply.Src != f.Orig.Dst
}

// SNAT returns the source the original direction is translated to (Reply.Dst) and
// whether it differs from Orig.Src. A flow without a reply address has no NAT.
func (f Flow) SNAT() (netip.AddrPort, bool) {
	if !f.Reply.Dst.Addr().IsValid() {
		return f.Orig.Src, false
	}
	return f.Reply.Dst, f.Reply.Dst != f.Orig.Src
}

// natReply returns the reply tuple that the kernel computes for f's NAT binding.
func (f Flow) natReply() Tuple {
	d, _ := f.DNAT()
	s, _ := f.SNAT()
	return Tuple{Src: d, Dst: s}
}

// String formats the flow as "proto orig / reply", for example
// "tcp 10.0.0.1:5000->10.0.0.10:3306 / 10.1.0.100:3306->10.1.0.10:5000".
func (f Flow) String() string {
	return protoName(f.Proto) + " " + f.Orig.String() + " / " + f.Reply.String()
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	default:
		return fmt.Sprintf("proto-%d", p)
	}
}

// normalize checks that f can be given to the kernel and returns it with IPv4-mapped
// addresses unmapped. A flow without reply addresses gets the plain inverse of Orig.
func (f Flow) normalize() (Flow, error) {
	if f.Proto != unix.IPPROTO_TCP && f.Proto != unix.IPPROTO_UDP {
		return f, fmt.Errorf("%w: protocol %d", ErrInvalidFlow, f.Proto)
	}
	unmap := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	f.Orig = Tuple{Src: unmap(f.Orig.Src), Dst: unmap(f.Orig.Dst)}
	f.Reply = Tuple{Src: unmap(f.Reply.Src), Dst: unmap(f.Reply.Dst)}
	if !f.Reply.Src.Addr().IsValid() {
		f.Reply.Src = f.Orig.Dst
	}
	if !f.Reply.Dst.Addr().IsValid() {
		f.Reply.Dst = f.Orig.Src
	}
	is4 := f.Orig.Src.Addr().Is4()
	for _, ap := range []netip.AddrPort{f.Orig.Src, f.Orig.Dst, f.Reply.Src, f.Reply.Dst} {
		a := ap.Addr()
		if !a.IsValid() || a.Is4() != is4 || a.Zone() != "" {
			return f, fmt.Errorf("%w: address %v in %v", ErrInvalidFlow, ap, f)
		}
	}
	if f.Proto != unix.IPPROTO_TCP {
		f.TCPState = 0
	}
	return f, nil
}
