package conntrack

import (
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

// timeoutOf returns f's timeout for the kernel, which refuses to create an entry without
// one: a flow that is about to expire gets one second rather than an error.
func timeoutOf(f Flow) uint32 { return max(f.Timeout, 1) }

// appendCreate appends IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL for a normalized
// flow: the original tuple, the plain inverse as reply tuple, and the NAT as separate
// CTA_NAT_DST / CTA_NAT_SRC from which the kernel computes the NATed reply tuple and the
// NAT status bits (DESIGN fact 1; ctnetlink_create_conntrack, ctnetlink_setup_nat).
func appendCreate(e *encoder, f Flow, seq uint32) {
	m := e.begin(msgCTNew, family(f.Orig),
		netlink.Request|netlink.Acknowledge|netlink.Create|netlink.Excl, seq)
	e.tuple(ctaTupleOrig, f.Proto, f.Orig)
	e.tuple(ctaTupleReply, f.Proto, f.Orig.inverse())
	e.be32(ctaTimeout, timeoutOf(f))
	e.be32(ctaMark, f.Mark)
	if s := f.Status & settableStatus; s != 0 {
		// The kernel marks the new entry CONFIRMED before it applies CTA_STATUS, and
		// answers EBUSY to a status that would clear it (ctnetlink_create_conntrack,
		// nf_ct_change_status_common), so the bit must be sent along.
		e.be32(ctaStatus, s|StatusConfirmed)
	}
	if f.Proto == unix.IPPROTO_TCP {
		state := f.TCPState
		if state == TCPStateNone {
			state = TCPStateEstablished // not known: what the kernel's mid-stream pickup assumes
		}
		e.tcp(state)
	}
	if to, ok := f.DNAT(); ok {
		e.nat(ctaNATDst, to)
	}
	if to, ok := f.SNAT(); ok {
		e.nat(ctaNATSrc, to)
	}
	e.end(m)
}

// appendUpdate appends IPCTNL_MSG_CT_NEW without NLM_F_CREATE for an existing entry. It
// carries state, timeout, mark and status only: the kernel refuses NAT attributes on an
// existing entry with EOPNOTSUPP (ctnetlink_change_conntrack, DESIGN fact 7). status 0
// leaves the entry's status alone, and TCPStateNone its state.
func appendUpdate(e *encoder, f Flow, status uint32, seq uint32) {
	m := e.begin(msgCTNew, family(f.Orig), netlink.Request|netlink.Acknowledge, seq)
	e.tuple(ctaTupleOrig, f.Proto, f.Orig)
	e.be32(ctaTimeout, timeoutOf(f))
	e.be32(ctaMark, f.Mark)
	if status != 0 {
		e.be32(ctaStatus, status)
	}
	if f.Proto == unix.IPPROTO_TCP {
		e.tcp(f.TCPState)
	}
	e.end(m)
}

// appendGet appends IPCTNL_MSG_CT_GET for the entry with that original tuple.
func appendGet(e *encoder, proto uint8, orig Tuple, seq uint32) {
	m := e.begin(msgCTGet, family(orig), netlink.Request|netlink.Acknowledge, seq)
	e.tuple(ctaTupleOrig, proto, orig)
	e.end(m)
}

// appendDelete appends IPCTNL_MSG_CT_DELETE for the entry with that original tuple and,
// when id is not 0, that kernel id only (so that an entry recreated meanwhile survives).
func appendDelete(e *encoder, proto uint8, orig Tuple, id uint32, seq uint32) {
	m := e.begin(msgCTDelete, family(orig), netlink.Request|netlink.Acknowledge, seq)
	e.tuple(ctaTupleOrig, proto, orig)
	if id != 0 {
		e.be32(ctaID, id)
	}
	e.end(m)
}

// createMessage, updateMessage, getMessage and deleteMessage build one message each, for
// querier.query; the sequence number is set when it is sent.
func createMessage(f Flow) (netlink.Message, error) {
	var e encoder
	appendCreate(&e, f, 0)
	return e.message(), nil
}

func updateMessage(f Flow, status uint32) (netlink.Message, error) {
	var e encoder
	appendUpdate(&e, f, status, 0)
	return e.message(), nil
}

func getMessage(proto uint8, orig Tuple) (netlink.Message, error) {
	var e encoder
	appendGet(&e, proto, orig, 0)
	return e.message(), nil
}

func deleteMessage(proto uint8, orig Tuple, id uint32) (netlink.Message, error) {
	var e encoder
	appendDelete(&e, proto, orig, id, 0)
	return e.message(), nil
}
