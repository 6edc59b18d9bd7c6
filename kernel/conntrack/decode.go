package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// The decoder here reads a ctnetlink entry (a dump or get answer, or an event) straight
// from the received bytes into a Flow, without allocating: Dump of a large table spends
// most of its Go time there, and ti-mo/conntrack's decoder builds a tree of attributes
// per entry (about 40 allocations). It accepts what ti-mo/conntrack's Event.Unmarshal
// accepts for the attributes a Flow holds and gives the same Flow (TestDecodeMatches,
// FuzzDecodeMatches); attributes a Flow does not hold are skipped.

// More attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaHelp          = 5  // CTA_HELP
	ctaCountersOrig  = 9  // CTA_COUNTERS_ORIG
	ctaCountersReply = 10 // CTA_COUNTERS_REPLY
	ctaUse           = 11 // CTA_USE
	ctaTupleMaster   = 14 // CTA_TUPLE_MASTER
	ctaSeqAdjOrig    = 15 // CTA_SEQ_ADJ_ORIG
	ctaSeqAdjReply   = 16 // CTA_SEQ_ADJ_REPLY
	ctaZone          = 18 // CTA_ZONE
	ctaSecCtx        = 19 // CTA_SECCTX
	ctaTimestamp     = 20 // CTA_TIMESTAMP
	ctaSynProxy      = 24 // CTA_SYNPROXY

	ctaTupleZone = 3 // CTA_TUPLE_ZONE

	ctaProtoICMPID     = 4 // CTA_PROTO_ICMP_ID
	ctaProtoICMPType   = 5 // CTA_PROTO_ICMP_TYPE
	ctaProtoICMPCode   = 6 // CTA_PROTO_ICMP_CODE
	ctaProtoICMPv6ID   = 7 // CTA_PROTO_ICMPV6_ID
	ctaProtoICMPv6Type = 8 // CTA_PROTO_ICMPV6_TYPE
	ctaProtoICMPv6Code = 9 // CTA_PROTO_ICMPV6_CODE

	ctaProtoInfoDCCP           = 2 // CTA_PROTOINFO_DCCP
	ctaProtoInfoSCTP           = 3 // CTA_PROTOINFO_SCTP
	ctaProtoInfoTCPWScaleOrig  = 2 // CTA_PROTOINFO_TCP_WSCALE_ORIGINAL
	ctaProtoInfoTCPWScaleReply = 3 // CTA_PROTOINFO_TCP_WSCALE_REPLY

	msgCTExpNew    = 0 // IPCTNL_MSG_EXP_NEW
	msgCTExpDelete = 2 // IPCTNL_MSG_EXP_DELETE

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

var errMalformed = errors.New("malformed attributes")

// attrs iterates over netlink attributes as mdlayher/netlink's AttributeDecoder does: an
// attribute of length 0 has no data, one of length 1 to 3 or running past the end is an
// error.
type attrs struct {
	b    []byte
	typ  uint16 // with its flag bits
	data []byte
	err  error
}

func (a *attrs) next() bool {
	if a.err != nil || len(a.b) == 0 {
		return false
	}
	if len(a.b) < nlaHeaderLen {
		a.err = errMalformed
		return false
	}
	l := int(binary.NativeEndian.Uint16(a.b))
	a.typ = binary.NativeEndian.Uint16(a.b[2:])
	switch {
	case l > len(a.b) || (l != 0 && l < nlaHeaderLen):
		a.err = errMalformed
		return false
	case l == 0:
		a.data = nil
		a.b = a.b[nlaHeaderLen:]
	default:
		a.data = a.b[nlaHeaderLen:l]
		a.b = a.b[min(len(a.b), (l+3)&^3):]
	}
	return true
}

// kind is the attribute's type without its flag bits, as a byte: the kernel's conntrack
// attribute types are all below 32, and ti-mo/conntrack, the reference, reads them so.
func (a *attrs) kind() uint8    { return uint8(a.typ & nlaTypeMask) }
func (a *attrs) nested() bool   { return a.typ&nlaFNested != 0 }
func (a *attrs) fail(err error) { a.err = err }

func (a *attrs) u8() uint8 {
	if len(a.data) != 1 {
		a.fail(fmt.Errorf("attribute %d: %d bytes, want 1: %w", a.kind(), len(a.data), errMalformed))
		return 0
	}
	return a.data[0]
}

func (a *attrs) u16() uint16 {
	if len(a.data) != 2 {
		a.fail(fmt.Errorf("attribute %d: %d bytes, want 2: %w", a.kind(), len(a.data), errMalformed))
		return 0
	}
	return binary.BigEndian.Uint16(a.data)
}

func (a *attrs) u32() uint32 {
	if len(a.data) != 4 {
		a.fail(fmt.Errorf("attribute %d: %d bytes, want 4: %w", a.kind(), len(a.data), errMalformed))
		return 0
	}
	return binary.BigEndian.Uint32(a.data)
}

// count returns the number of attributes of non-zero length in b, or an error when b is
// not a well-formed run of attributes (mdlayher/netlink counts so in NewAttributeDecoder).
func count(b []byte) (int, error) {
	n := 0
	for i := 0; i < len(b); {
		if len(b)-i < nlaHeaderLen {
			return 0, errMalformed
		}
		l := int(binary.NativeEndian.Uint16(b[i:]))
		if l != 0 {
			n++
		}
		i += (max(l, nlaHeaderLen) + 3) &^ 3
	}
	return n, nil
}

// rawTuple is one direction as the kernel sent it.
type rawTuple struct {
	src, dst         netip.Addr
	proto            uint8
	sport, dport     uint16
	hasIP, hasProtos bool
}

func decodeTuple(b []byte, t *rawTuple) error {
	if n, err := count(b); err != nil {
		return err
	} else if n < 2 {
		return fmt.Errorf("tuple has %d attributes: %w", n, errMalformed)
	}
	a := attrs{b: b}
	for a.next() {
		switch a.kind() {
		case ctaTupleIP:
			t.src, t.dst = netip.Addr{}, netip.Addr{}
			if err := decodeIPTuple(a.data, t); err != nil {
				return err
			}
			t.hasIP = true
		case ctaTupleProto:
			t.proto, t.sport, t.dport = 0, 0, 0
			if err := decodeProtoTuple(a.data, t); err != nil {
				return err
			}
			t.hasProtos = true
		case ctaTupleZone:
			a.u16()
		default:
			return fmt.Errorf("tuple attribute %d: %w", a.kind(), errMalformed)
		}
	}
	return a.err
}

func decodeIPTuple(b []byte, t *rawTuple) error {
	if n, err := count(b); err != nil {
		return err
	} else if n != 2 {
		return fmt.Errorf("ip tuple has %d attributes: %w", n, errMalformed)
	}
	a := attrs{b: b}
	for a.next() {
		addr, ok := netip.AddrFromSlice(a.data)
		if !ok {
			return fmt.Errorf("address of %d bytes: %w", len(a.data), errMalformed)
		}
		switch a.kind() {
		case ctaIPv4Src, ctaIPv6Src:
			t.src = addr
		case ctaIPv4Dst, ctaIPv6Dst:
			t.dst = addr
		default:
			return fmt.Errorf("ip tuple attribute %d: %w", a.kind(), errMalformed)
		}
	}
	return a.err
}

func decodeProtoTuple(b []byte, t *rawTuple) error {
	if n, err := count(b); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("empty proto tuple: %w", errMalformed)
	}
	a := attrs{b: b}
	for a.next() {
		switch a.kind() {
		case ctaProtoNum:
			t.proto = a.u8()
		case ctaProtoSrcPort:
			t.sport = a.u16()
		case ctaProtoDstPort:
			t.dport = a.u16()
		case ctaProtoICMPID, ctaProtoICMPv6ID:
			a.u16()
		case ctaProtoICMPType, ctaProtoICMPCode, ctaProtoICMPv6Type, ctaProtoICMPv6Code:
			a.u8()
		default:
			return fmt.Errorf("proto tuple attribute %d: %w", a.kind(), errMalformed)
		}
	}
	return a.err
}

// decodeProtoInfo returns the TCP state, and whether a TCP protoinfo was present.
func decodeProtoInfo(b []byte) (uint8, bool, error) {
	if n, err := count(b); err != nil {
		return 0, false, err
	} else if n != 1 {
		return 0, false, fmt.Errorf("protoinfo has %d attributes: %w", n, errMalformed)
	}
	a := attrs{b: b}
	if !a.next() {
		return 0, false, a.err
	}
	switch a.kind() {
	case ctaProtoInfoTCP:
	case ctaProtoInfoDCCP, ctaProtoInfoSCTP:
		return 0, false, nil // not mirrored; their contents do not matter here
	default:
		return 0, false, fmt.Errorf("protoinfo attribute %d: %w", a.kind(), errMalformed)
	}
	tb := a.data
	if n, err := count(tb); err != nil {
		return 0, false, err
	} else if n == 0 {
		return 0, false, fmt.Errorf("empty tcp protoinfo: %w", errMalformed)
	}
	var state uint8
	t := attrs{b: tb}
	for t.next() {
		switch t.kind() {
		case ctaProtoInfoTCPState:
			state = t.u8()
		case ctaProtoInfoTCPWScaleOrig, ctaProtoInfoTCPWScaleReply:
			t.u8()
		case ctaProtoInfoTCPFlagsOriginal, ctaProtoInfoTCPFlagsReply:
			t.u16()
		default:
			return 0, false, fmt.Errorf("tcp protoinfo attribute %d: %w", t.kind(), errMalformed)
		}
	}
	return state, true, t.err
}

// decodeEntry decodes the attributes of one entry (after the nfgenmsg header). ok is false
// for entries that the appliance does not mirror (neither TCP nor UDP, or tuples that are
// incomplete or of mixed families); it never panics, whatever the kernel sent.
func decodeEntry(b []byte) (Flow, bool, error) {
	if _, err := count(b); err != nil {
		return Flow{}, false, err
	}
	var f Flow
	var orig, reply rawTuple
	var tcpState uint8
	var hasTCP, hasProtoInfo bool
	a := attrs{b: b}
	for a.next() {
		switch k := a.kind(); k {
		case ctaTupleOrig, ctaTupleReply, ctaProtoInfo, ctaTupleMaster, ctaHelp,
			ctaCountersOrig, ctaCountersReply, ctaSecCtx, ctaTimestamp, ctaSeqAdjOrig,
			ctaSeqAdjReply, ctaSynProxy:
			if !a.nested() {
				return Flow{}, false, fmt.Errorf("attribute %d is not nested: %w", k, errMalformed)
			}
			var err error
			switch k {
			case ctaTupleOrig:
				err = decodeTuple(a.data, &orig)
			case ctaTupleReply:
				err = decodeTuple(a.data, &reply)
			case ctaProtoInfo:
				if hasProtoInfo {
					return Flow{}, false, fmt.Errorf("second protoinfo: %w", errMalformed)
				}
				hasProtoInfo = true
				tcpState, hasTCP, err = decodeProtoInfo(a.data)
			default:
				_, err = count(a.data) // not held by a Flow
			}
			if err != nil {
				return Flow{}, false, fmt.Errorf("attribute %d: %w", k, err)
			}
		case ctaTimeout:
			f.Timeout = a.u32()
		case ctaID:
			f.ID = a.u32()
		case ctaUse:
			a.u32()
		case ctaMark:
			f.Mark = a.u32()
		case ctaZone:
			a.u16()
		case ctaStatus:
			f.Status = a.u32()
		}
	}
	if a.err != nil {
		return Flow{}, false, a.err
	}

	proto := orig.proto
	if (proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP) || reply.proto != proto {
		return Flow{}, false, nil
	}
	addrs := [4]netip.Addr{orig.src.Unmap(), orig.dst.Unmap(), reply.src.Unmap(), reply.dst.Unmap()}
	for _, ad := range addrs {
		if !ad.IsValid() || ad.Is4() != addrs[0].Is4() {
			return Flow{}, false, nil
		}
	}
	f.Proto = proto
	f.Orig = Tuple{Src: netip.AddrPortFrom(addrs[0], orig.sport), Dst: netip.AddrPortFrom(addrs[1], orig.dport)}
	f.Reply = Tuple{Src: netip.AddrPortFrom(addrs[2], reply.sport), Dst: netip.AddrPortFrom(addrs[3], reply.dport)}
	if proto == unix.IPPROTO_TCP && hasTCP {
		f.TCPState = tcpState
	}
	return f, true, nil
}

// decodeFlow decodes one entry of a dump or get answer. ok is false for entries that the
// appliance does not mirror. The answer has the request's message type (IPCTNL_MSG_CT_GET)
// but the same layout as an event.
func decodeFlow(m netlink.Message) (Flow, bool, error) {
	f, ok, err := decodeFlowData(m.Data)
	if err != nil {
		return Flow{}, false, fmt.Errorf("decode conntrack entry: %w", err)
	}
	return f, ok, nil
}

func decodeFlowData(data []byte) (Flow, bool, error) {
	if len(data) < nfgenHeaderLen {
		return Flow{}, false, fmt.Errorf("message of %d bytes: %w", len(data), errMalformed)
	}
	return decodeEntry(data[nfgenHeaderLen:])
}

// decodeEvent decodes one event message. ok is false (with a nil error) for events the
// appliance does not follow: expectations and entries that are neither TCP nor UDP.
func decodeEvent(m netlink.Message) (ev Event, ok bool, err error) {
	if len(m.Data) < nfgenHeaderLen {
		return Event{}, false, fmt.Errorf("decode conntrack event: message of %d bytes: %w", len(m.Data), errMalformed)
	}
	subsys, typ := netfilter.SubsystemID(uint16(m.Header.Type)>>8), uint8(m.Header.Type)
	switch subsys {
	case netfilter.NFSubsysCTNetlink:
		switch typ {
		case msgCTNew:
			ev.Type = EventUpdate
			if m.Header.Flags&(netlink.Create|netlink.Excl) != 0 {
				ev.Type = EventNew
			}
		case msgCTDelete:
			ev.Type = EventDestroy
		default:
			return Event{}, false, fmt.Errorf("decode conntrack event: message type %d: %w", typ, errMalformed)
		}
	case netfilter.NFSubsysCTNetlinkExp:
		if typ != msgCTExpNew && typ != msgCTExpDelete {
			return Event{}, false, fmt.Errorf("decode conntrack event: expectation message type %d: %w", typ, errMalformed)
		}
		return Event{}, false, nil
	default:
		return Event{}, false, fmt.Errorf("decode conntrack event: subsystem %d: %w", subsys, errMalformed)
	}
	ev.Flow, ok, err = decodeEntry(m.Data[nfgenHeaderLen:])
	if err != nil {
		return Event{}, false, fmt.Errorf("decode conntrack event: %w", err)
	}
	if !ok {
		return Event{}, false, nil
	}
	ev.PortID = m.Header.PID
	return ev, true, nil
}
