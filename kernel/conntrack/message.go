package conntrack

import (
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// Attribute numbers from include/uapi/linux/netfilter/nfnetlink_conntrack.h. ti-mo/conntrack
// keeps its own unexported; these are the ones the messages built here need.
const (
	ctaTupleOrig  = 1  // CTA_TUPLE_ORIG
	ctaTupleReply = 2  // CTA_TUPLE_REPLY
	ctaStatus     = 3  // CTA_STATUS
	ctaProtoInfo  = 4  // CTA_PROTOINFO
	ctaNATSrc     = 6  // CTA_NAT_SRC
	ctaTimeout    = 7  // CTA_TIMEOUT
	ctaMark       = 8  // CTA_MARK
	ctaID         = 12 // CTA_ID
	ctaNATDst     = 13 // CTA_NAT_DST

	ctaTupleIP    = 1 // CTA_TUPLE_IP
	ctaTupleProto = 2 // CTA_TUPLE_PROTO

	ctaIPv4Src = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst = 2 // CTA_IP_V4_DST
	ctaIPv6Src = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst = 4 // CTA_IP_V6_DST

	ctaProtoNum     = 1 // CTA_PROTO_NUM
	ctaProtoSrcPort = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDstPort = 3 // CTA_PROTO_DST_PORT

	ctaProtoInfoTCP              = 1 // CTA_PROTOINFO_TCP
	ctaProtoInfoTCPState         = 1 // CTA_PROTOINFO_TCP_STATE
	ctaProtoInfoTCPFlagsOriginal = 4 // CTA_PROTOINFO_TCP_FLAGS_ORIGINAL
	ctaProtoInfoTCPFlagsReply    = 5 // CTA_PROTOINFO_TCP_FLAGS_REPLY

	ctaNATv4MinIP = 1 // CTA_NAT_V4_MINIP
	ctaNATv4MaxIP = 2 // CTA_NAT_V4_MAXIP
	ctaNATProto   = 3 // CTA_NAT_PROTO
	ctaNATv6MinIP = 4 // CTA_NAT_V6_MINIP
	ctaNATv6MaxIP = 5 // CTA_NAT_V6_MAXIP

	ctaProtoNATPortMin = 1 // CTA_PROTONAT_PORT_MIN
	ctaProtoNATPortMax = 2 // CTA_PROTONAT_PORT_MAX

	msgCTNew    = 0 // IPCTNL_MSG_CT_NEW
	msgCTGet    = 1 // IPCTNL_MSG_CT_GET
	msgCTDelete = 2 // IPCTNL_MSG_CT_DELETE

	// tcpFlagBeLiberal is IP_CT_TCP_FLAG_BE_LIBERAL. The kernel clears the window
	// tracking data of an entry made through netlink, so a mirrored connection must not
	// be judged by windows it never saw (DESIGN fact 6; conntrackd does the same).
	tcpFlagBeLiberal = 0x08
)

func family(t Tuple) netfilter.ProtoFamily {
	if t.Src.Addr().Is4() {
		return netfilter.ProtoIPv4
	}
	return netfilter.ProtoIPv6
}

func u16(v uint16) []byte { return netfilter.Uint16Bytes(v) }
func u32(v uint32) []byte { return netfilter.Uint32Bytes(v) }

// tupleAttr encodes one direction: CTA_TUPLE_IP and CTA_TUPLE_PROTO, all big-endian.
func tupleAttr(typ uint16, proto uint8, t Tuple) netfilter.Attribute {
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

// natAttr encodes CTA_NAT_SRC or CTA_NAT_DST binding exactly one address and port
// (ctattr_nat, ctattr_protonat; parsed by nfnetlink_parse_nat in net/netfilter/nf_nat_core.c).
func natAttr(typ uint16, to netip.AddrPort) netfilter.Attribute {
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

// tcpAttr encodes the TCP state with "be liberal" set for both directions: flag byte,
// then mask byte (struct nf_ct_tcp_flags).
func tcpAttr(state uint8) netfilter.Attribute {
	liberal := []byte{tcpFlagBeLiberal, tcpFlagBeLiberal}
	return netfilter.Attribute{Type: ctaProtoInfo, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaProtoInfoTCP, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoInfoTCPState, Data: []byte{state}},
			{Type: ctaProtoInfoTCPFlagsOriginal, Data: liberal},
			{Type: ctaProtoInfoTCPFlagsReply, Data: liberal},
		}},
	}}
}

// timeoutOf returns f's timeout for the kernel, which refuses to create an entry without
// one: a flow that is about to expire gets one second rather than an error.
func timeoutOf(f Flow) uint32 { return max(f.Timeout, 1) }

// createMessage builds IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL for a normalized
// flow: the original tuple, the plain inverse as reply tuple, and the NAT as separate
// CTA_NAT_DST / CTA_NAT_SRC from which the kernel computes the NATed reply tuple and the
// NAT status bits (DESIGN fact 1; ctnetlink_create_conntrack, ctnetlink_setup_nat).
func createMessage(f Flow) (netlink.Message, error) {
	attrs := []netfilter.Attribute{
		tupleAttr(ctaTupleOrig, f.Proto, f.Orig),
		tupleAttr(ctaTupleReply, f.Proto, f.Orig.inverse()),
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
		attrs = append(attrs, tcpAttr(f.TCPState))
	}
	if to, ok := f.DNAT(); ok {
		attrs = append(attrs, natAttr(ctaNATDst, to))
	}
	if to, ok := f.SNAT(); ok {
		attrs = append(attrs, natAttr(ctaNATSrc, to))
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTNew,
		Family:      family(f.Orig),
		Flags:       netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
	}, attrs)
}

// updateMessage builds IPCTNL_MSG_CT_NEW without NLM_F_CREATE for an existing entry. It
// carries state, timeout, mark and status only: the kernel refuses NAT attributes on an
// existing entry with EOPNOTSUPP (ctnetlink_change_conntrack, DESIGN fact 7). status 0
// leaves the entry's status alone.
func updateMessage(f Flow, status uint32) (netlink.Message, error) {
	attrs := []netfilter.Attribute{
		tupleAttr(ctaTupleOrig, f.Proto, f.Orig),
		{Type: ctaTimeout, Data: u32(timeoutOf(f))},
		{Type: ctaMark, Data: u32(f.Mark)},
	}
	if status != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaStatus, Data: u32(status)})
	}
	if f.Proto == unix.IPPROTO_TCP {
		attrs = append(attrs, tcpAttr(f.TCPState))
	}
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTNew,
		Family:      family(f.Orig),
		Flags:       netlink.Request | netlink.Acknowledge,
	}, attrs)
}

// getMessage builds IPCTNL_MSG_CT_GET for the entry with that original tuple.
func getMessage(proto uint8, orig Tuple) (netlink.Message, error) {
	return netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTGet,
		Family:      family(orig),
		Flags:       netlink.Request | netlink.Acknowledge,
	}, []netfilter.Attribute{tupleAttr(ctaTupleOrig, proto, orig)})
}

// deleteMessage builds IPCTNL_MSG_CT_DELETE for the entry with that original tuple and,
// when id is not 0, that kernel id only (so that an entry recreated meanwhile survives).
func deleteMessage(proto uint8, orig Tuple, id uint32) (netlink.Message, error) {
	attrs := []netfilter.Attribute{tupleAttr(ctaTupleOrig, proto, orig)}
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
