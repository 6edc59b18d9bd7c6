package conntrack

// What this package used before it encoded and decoded messages itself: ti-mo/netfilter's
// attribute trees for requests, ti-mo/conntrack's Event.Unmarshal and a conversion for
// entries. They are the references that encode.go and decode.go are checked against
// (TestEncoderMatches, TestDecodeMatches, FuzzDecode).

import (
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// flowFromCT converts a flow decoded by ti-mo/conntrack. ok is false for entries that the
// appliance does not mirror (neither TCP nor UDP, or tuples that are incomplete or of
// mixed families); it never panics, whatever the kernel sent.
func flowFromCT(c *ct.Flow) (Flow, bool) {
	if c == nil {
		return Flow{}, false
	}
	o, r := c.TupleOrig, c.TupleReply
	proto := o.Proto.Protocol
	if (proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP) || r.Proto.Protocol != proto {
		return Flow{}, false
	}
	addrs := []netip.Addr{
		o.IP.SourceAddress.Unmap(), o.IP.DestinationAddress.Unmap(),
		r.IP.SourceAddress.Unmap(), r.IP.DestinationAddress.Unmap(),
	}
	for _, a := range addrs {
		if !a.IsValid() || a.Is4() != addrs[0].Is4() {
			return Flow{}, false
		}
	}
	f := Flow{
		Proto: proto,
		Orig: Tuple{
			Src: netip.AddrPortFrom(addrs[0], o.Proto.SourcePort),
			Dst: netip.AddrPortFrom(addrs[1], o.Proto.DestinationPort),
		},
		Reply: Tuple{
			Src: netip.AddrPortFrom(addrs[2], r.Proto.SourcePort),
			Dst: netip.AddrPortFrom(addrs[3], r.Proto.DestinationPort),
		},
		Timeout: c.Timeout,
		Mark:    c.Mark,
		Status:  uint32(c.Status),
		ID:      c.ID,
	}
	if proto == unix.IPPROTO_TCP && c.ProtoInfo.TCP != nil {
		f.TCPState = c.ProtoInfo.TCP.State
	}
	return f, true
}

// refDecodeFlow decodes one entry of a dump or get answer. ok is false for entries that the
// appliance does not mirror. The answer has the request's message type (IPCTNL_MSG_CT_GET)
// but the same layout as an event; ti-mo/conntrack exports only its event decoder, so the
// header is presented to it as a "new" event.
func refDecodeFlow(m netlink.Message) (Flow, bool, error) {
	m.Header.Type = netlink.HeaderType(uint16(netfilter.NFSubsysCTNetlink)<<8 | msgCTNew)
	m.Header.Flags |= netlink.Create
	var ce ct.Event
	if err := ce.Unmarshal(m); err != nil {
		return Flow{}, false, fmt.Errorf("decode conntrack entry: %w", err)
	}
	f, ok := flowFromCT(ce.Flow)
	return f, ok, nil
}

// refDecodeEvent decodes one event message. ok is false (with a nil error) for events the
// appliance does not follow: expectations and entries that are neither TCP nor UDP.
func refDecodeEvent(m netlink.Message) (ev Event, ok bool, err error) {
	var ce ct.Event
	if err := ce.Unmarshal(m); err != nil {
		return Event{}, false, fmt.Errorf("decode conntrack event: %w", err)
	}
	switch ce.Type {
	case ct.EventNew:
		ev.Type = EventNew
	case ct.EventUpdate:
		ev.Type = EventUpdate
	case ct.EventDestroy:
		ev.Type = EventDestroy
	default:
		return Event{}, false, nil
	}
	ev.Flow, ok = flowFromCT(ce.Flow)
	if !ok {
		return Event{}, false, nil
	}
	ev.PortID = m.Header.PID
	return ev, true, nil
}

// refTupleAttr encodes one direction: CTA_TUPLE_IP and CTA_TUPLE_PROTO, all big-endian.
func refTupleAttr(typ uint16, proto uint8, t Tuple) netfilter.Attribute {
	src, dst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if !t.Src.Addr().Is4() {
		src, dst = ctaIPv6Src, ctaIPv6Dst
	}
	return netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaTupleIP, Nested: true, Children: []netfilter.Attribute{
			{Type: src, Data: t.Src.Addr().AsSlice()},
			{Type: dst, Data: t.Dst.Addr().AsSlice()},
		}},
		{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoNum, Data: []byte{proto}},
			{Type: ctaProtoSrcPort, Data: u16(t.Src.Port())},
			{Type: ctaProtoDstPort, Data: u16(t.Dst.Port())},
		}},
	}}
}

// refNatAttr encodes CTA_NAT_SRC or CTA_NAT_DST binding exactly one address and port
// (ctattr_nat, ctattr_protonat; parsed by nfnetlink_parse_nat in net/netfilter/nf_nat_core.c).
func refNatAttr(typ uint16, to netip.AddrPort) netfilter.Attribute {
	minIP, maxIP := uint16(ctaNATv4MinIP), uint16(ctaNATv4MaxIP)
	if !to.Addr().Is4() {
		minIP, maxIP = ctaNATv6MinIP, ctaNATv6MaxIP
	}
	return netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
		{Type: minIP, Data: to.Addr().AsSlice()},
		{Type: maxIP, Data: to.Addr().AsSlice()},
		{Type: ctaNATProto, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoNATPortMin, Data: u16(to.Port())},
			{Type: ctaProtoNATPortMax, Data: u16(to.Port())},
		}},
	}}
}

// refTcpAttr encodes the TCP state with "be liberal" set for both directions: flag byte,
// then mask byte (struct nf_ct_tcp_flags).
func refTcpAttr(state uint8) netfilter.Attribute {
	liberal := []byte{tcpFlagBeLiberal, tcpFlagBeLiberal}
	return netfilter.Attribute{Type: ctaProtoInfo, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaProtoInfoTCP, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoInfoTCPState, Data: []byte{state}},
			{Type: ctaProtoInfoTCPFlagsOriginal, Data: liberal},
			{Type: ctaProtoInfoTCPFlagsReply, Data: liberal},
		}},
	}}
}

// refCreateMessage builds IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL for a normalized
// flow: the original tuple, the plain inverse as reply tuple, and the NAT as separate
// CTA_NAT_DST / CTA_NAT_SRC from which the kernel computes the NATed reply tuple and the
// NAT status bits (DESIGN fact 1; ctnetlink_create_conntrack, ctnetlink_setup_nat).
func refCreateMessage(f Flow) (netlink.Message, error) {
	attrs := []netfilter.Attribute{
		refTupleAttr(ctaTupleOrig, f.Proto, f.Orig),
		refTupleAttr(ctaTupleReply, f.Proto, f.Orig.inverse()),
		{Type: ctaTimeout, Data: u32(timeoutOf(f))},
		{Type: ctaMark, Data: u32(f.Mark)},
	}
	if s := f.Status & settableStatus; s != 0 {
		// The kernel marks the new entry CONFIRMED before it applies CTA_STATUS, and
		// answers EBUSY to a status that would clear it (ctnetlink_create_conntrack,
		// nf_ct_change_status_common), so the bit must be sent along.
		attrs = append(attrs, netfilter.Attribute{Type: ctaStatus, Data: u32(s | StatusConfirmed)})
	}
	if f.Proto == unix.IPPROTO_TCP {
		attrs = append(attrs, refTcpAttr(f.TCPState))
	}
	if to, ok := f.DNAT(); ok {
		attrs = append(attrs, refNatAttr(ctaNATDst, to))
	}
	if to, ok := f.SNAT(); ok {
		attrs = append(attrs, refNatAttr(ctaNATSrc, to))
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTNew,
		Family:      family(f.Orig),
		Flags:       netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
	}, attrs)
}

// refUpdateMessage builds IPCTNL_MSG_CT_NEW without NLM_F_CREATE for an existing entry. It
// carries state, timeout, mark and status only: the kernel refuses NAT attributes on an
// existing entry with EOPNOTSUPP (ctnetlink_change_conntrack, DESIGN fact 7). status 0
// leaves the entry's status alone.
func refUpdateMessage(f Flow, status uint32) (netlink.Message, error) {
	attrs := []netfilter.Attribute{
		refTupleAttr(ctaTupleOrig, f.Proto, f.Orig),
		{Type: ctaTimeout, Data: u32(timeoutOf(f))},
		{Type: ctaMark, Data: u32(f.Mark)},
	}
	if status != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaStatus, Data: u32(status)})
	}
	if f.Proto == unix.IPPROTO_TCP {
		attrs = append(attrs, refTcpAttr(f.TCPState))
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTNew,
		Family:      family(f.Orig),
		Flags:       netlink.Request | netlink.Acknowledge,
	}, attrs)
}

// refGetMessage builds IPCTNL_MSG_CT_GET for the entry with that original tuple.
func refGetMessage(proto uint8, orig Tuple) (netlink.Message, error) {
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTGet,
		Family:      family(orig),
		Flags:       netlink.Request | netlink.Acknowledge,
	}, []netfilter.Attribute{refTupleAttr(ctaTupleOrig, proto, orig)})
}

// refDeleteMessage builds IPCTNL_MSG_CT_DELETE for the entry with that original tuple and,
// when id is not 0, that kernel id only (so that an entry recreated meanwhile survives).
func refDeleteMessage(proto uint8, orig Tuple, id uint32) (netlink.Message, error) {
	attrs := []netfilter.Attribute{refTupleAttr(ctaTupleOrig, proto, orig)}
	if id != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaID, Data: u32(id)})
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTDelete,
		Family:      family(orig),
		Flags:       netlink.Request | netlink.Acknowledge,
	}, attrs)
}

func u16(v uint16) []byte { return netfilter.Uint16Bytes(v) }
func u32(v uint32) []byte { return netfilter.Uint32Bytes(v) }
