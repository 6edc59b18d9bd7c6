package conntrack

import (
	"encoding/binary"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
)

const (
	nlmsgHeaderLen = 16 // struct nlmsghdr
	nfgenHeaderLen = 4  // struct nfgenmsg
	nlaHeaderLen   = 4  // struct nlattr
	nlaFNested     = 0x8000
)

// encoder appends netlink messages (nlmsghdr, nfgenmsg, attributes) to one buffer, so
// that many requests go to the kernel in one sendmsg without an allocation per attribute.
// The bytes are those that netfilter.MarshalNetlink produces (TestEncoderMatches).
// Lengths and types are in host byte order, as netlink wants; attribute payloads are
// whatever the caller gives (big-endian for ctnetlink).
type encoder struct {
	b []byte
}

func (e *encoder) reset() { e.b = e.b[:0] }

// begin starts a ctnetlink message and returns its offset for end.
func (e *encoder) begin(msgType uint8, fam netfilter.ProtoFamily, flags netlink.HeaderFlags, seq uint32) int {
	off := len(e.b)
	h := e.grow(nlmsgHeaderLen + nfgenHeaderLen)
	clear(h)
	ne := binary.NativeEndian
	ne.PutUint16(h[4:], uint16(netfilter.NFSubsysCTNetlink)<<8|uint16(msgType))
	ne.PutUint16(h[6:], uint16(flags))
	ne.PutUint32(h[8:], seq)
	h[16] = uint8(fam) // nfgen_family; version (NFNETLINK_V0) and res_id stay 0
	return off
}

// end writes the length of the message that begin started at off.
func (e *encoder) end(off int) {
	binary.NativeEndian.PutUint32(e.b[off:], uint32(len(e.b)-off))
}

// noAck clears NLM_F_ACK of the message at off.
func (e *encoder) noAck(off int) {
	f := binary.NativeEndian.Uint16(e.b[off+6:])
	binary.NativeEndian.PutUint16(e.b[off+6:], f&^uint16(netlink.Acknowledge))
}

// grow appends n bytes to the buffer and returns them, to be written in place: a message
// is a few dozen small attributes, and one append each would cost more than their bytes.
func (e *encoder) grow(n int) []byte {
	l := len(e.b)
	if cap(e.b)-l < n {
		e.b = append(e.b, make([]byte, n)...)
	} else {
		e.b = e.b[:l+n]
	}
	return e.b[l:]
}

// attrHeader writes an attribute's header at the start of p, whose length is the padded
// size of the attribute.
func attrHeader(p []byte, typ uint16, payload int) {
	binary.NativeEndian.PutUint16(p[0:], uint16(nlaHeaderLen+payload))
	binary.NativeEndian.PutUint16(p[2:], typ)
}

// attr appends one attribute with data as payload, padded to 4 bytes.
func (e *encoder) attr(typ uint16, data ...byte) {
	p := e.grow((nlaHeaderLen + len(data) + 3) &^ 3)
	attrHeader(p, typ, len(data))
	clear(p[nlaHeaderLen+copy(p[nlaHeaderLen:], data):])
}

func (e *encoder) u8(typ uint16, v uint8) {
	p := e.grow(8)
	attrHeader(p, typ, 1)
	p[4], p[5], p[6], p[7] = v, 0, 0, 0
}

func (e *encoder) be16(typ uint16, v uint16) {
	p := e.grow(8)
	attrHeader(p, typ, 2)
	binary.BigEndian.PutUint16(p[4:], v)
	p[6], p[7] = 0, 0
}

func (e *encoder) be32(typ uint16, v uint32) {
	p := e.grow(8)
	attrHeader(p, typ, 4)
	binary.BigEndian.PutUint32(p[4:], v)
}

func (e *encoder) addr(typ uint16, a netip.Addr) {
	if a.Is4() {
		p := e.grow(8)
		attrHeader(p, typ, 4)
		b := a.As4()
		copy(p[4:], b[:])
		return
	}
	p := e.grow(20)
	attrHeader(p, typ, 16)
	b := a.As16()
	copy(p[4:], b[:])
}

// nest starts a nested attribute and returns its offset for unnest.
func (e *encoder) nest(typ uint16) int {
	off := len(e.b)
	attrHeader(e.grow(nlaHeaderLen), typ|nlaFNested, 0) // the length comes with unnest
	return off
}

func (e *encoder) unnest(off int) {
	binary.NativeEndian.PutUint16(e.b[off:], uint16(len(e.b)-off))
}

// tuple appends one direction: CTA_TUPLE_IP and CTA_TUPLE_PROTO, all big-endian.
func (e *encoder) tuple(typ uint16, proto uint8, t Tuple) {
	src, dst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if !t.Src.Addr().Is4() {
		src, dst = ctaIPv6Src, ctaIPv6Dst
	}
	n := e.nest(typ)
	ip := e.nest(ctaTupleIP)
	e.addr(src, t.Src.Addr())
	e.addr(dst, t.Dst.Addr())
	e.unnest(ip)
	p := e.nest(ctaTupleProto)
	e.u8(ctaProtoNum, proto)
	e.be16(ctaProtoSrcPort, t.Src.Port())
	e.be16(ctaProtoDstPort, t.Dst.Port())
	e.unnest(p)
	e.unnest(n)
}

// nat appends CTA_NAT_SRC or CTA_NAT_DST binding exactly one address and port
// (ctattr_nat, ctattr_protonat; parsed by nfnetlink_parse_nat in net/netfilter/nf_nat_core.c).
func (e *encoder) nat(typ uint16, to netip.AddrPort) {
	minIP, maxIP := uint16(ctaNATv4MinIP), uint16(ctaNATv4MaxIP)
	if !to.Addr().Is4() {
		minIP, maxIP = ctaNATv6MinIP, ctaNATv6MaxIP
	}
	n := e.nest(typ)
	e.addr(minIP, to.Addr())
	e.addr(maxIP, to.Addr())
	p := e.nest(ctaNATProto)
	e.be16(ctaProtoNATPortMin, to.Port())
	e.be16(ctaProtoNATPortMax, to.Port())
	e.unnest(p)
	e.unnest(n)
}

// tcp appends the TCP state with "be liberal" set for both directions: flag byte, then
// mask byte (struct nf_ct_tcp_flags). TCPStateNone sends no state, which the kernel
// reads as "unchanged" (nlattr_to_tcp).
func (e *encoder) tcp(state uint8) {
	n := e.nest(ctaProtoInfo)
	t := e.nest(ctaProtoInfoTCP)
	if state != TCPStateNone {
		e.u8(ctaProtoInfoTCPState, state)
	}
	e.attr(ctaProtoInfoTCPFlagsOriginal, tcpFlagBeLiberal, tcpFlagBeLiberal)
	e.attr(ctaProtoInfoTCPFlagsReply, tcpFlagBeLiberal, tcpFlagBeLiberal)
	e.unnest(t)
	e.unnest(n)
}

// message returns the one message in e as a netlink.Message (for querier.query and the
// tests that decode it with ti-mo/netfilter).
func (e *encoder) message() netlink.Message {
	ne := binary.NativeEndian
	return netlink.Message{
		Header: netlink.Header{
			Length:   ne.Uint32(e.b[0:]),
			Type:     netlink.HeaderType(ne.Uint16(e.b[4:])),
			Flags:    netlink.HeaderFlags(ne.Uint16(e.b[6:])),
			Sequence: ne.Uint32(e.b[8:]),
			PID:      ne.Uint32(e.b[12:]),
		},
		Data: e.b[nlmsgHeaderLen:],
	}
}
