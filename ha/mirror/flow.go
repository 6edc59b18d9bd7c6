package mirror

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Tuple is one direction of a connection.
type Tuple struct{ Src, Dst netip.AddrPort }

// Flow is a mirrored connection-tracking entry. It mirrors the kernel package's flow type; the
// daemon converts between the two, so that ha/ does not import kernel/.
//
// The four addresses of a flow share one family: all IPv4, or all IPv6 (an IPv4-mapped IPv6
// address counts as IPv6). Zones are not carried.
type Flow struct {
	Proto    uint8  // IPPROTO_TCP / IPPROTO_UDP
	Orig     Tuple  // client -> virtual address
	Reply    Tuple  // NATed reply direction: pool member -> SNAT address
	TCPState uint8  // the kernel's TCP conntrack state (enum tcp_conntrack), or TCPStateUnknown
	Timeout  uint32 // seconds left
	Mark     uint32 // connection mark
}

// TCPStateUnknown (TCP_CONNTRACK_NONE, which no live entry is in) says that the change did not
// carry the state: the kernel's update events for a status change alone have none. The standby
// keeps the state its entry has.
const TCPStateUnknown uint8 = 0

func unknownTCPState(f *Flow) bool {
	return f.Proto == unix.IPPROTO_TCP && f.TCPState == TCPStateUnknown
}

// Key identifies a flow: its protocol and original tuple. It is comparable and usable as a map key.
type Key struct {
	Proto uint8
	Orig  Tuple
}

// Key returns the flow's identity.
func (f Flow) Key() Key { return Key{Proto: f.Proto, Orig: f.Orig} }

// FlowWriter is the standby's kernel table: what the Receiver writes mirrored entries into.
// The Receiver calls it from one goroutine at a time, in stream order.
type FlowWriter interface {
	// Inject creates or updates the entry, NAT-correct.
	Inject(Flow) error
	// Delete removes the entry with the flow's original tuple; a missing entry is not an error.
	Delete(Flow) error
}

// BatchWriter is a FlowWriter that can apply many changes in one call (for the kernel, many
// netlink messages in one sendmsg); the Receiver uses it when the Table implements it. It
// passes runs of up to 256 changes with distinct keys, the deletes of a run before its
// upserts, in stream order relative to syncs, and never keeps the slice after the call
// returns.
//
// InjectBatch and DeleteBatch return errs[i] for flows[i]: a nil slice, or a nil entry, is a
// success (a slice shorter than flows counts as nil for the flows past its end). They are
// called under the same rule as the FlowWriter methods: one goroutine at a time.
type BatchWriter interface {
	InjectBatch(flows []Flow) []error
	DeleteBatch(flows []Flow) []error
}

// Address families on the wire.
const (
	familyV4 = 4
	familyV6 = 6
)

// family reports the address family shared by the given addresses, or an error wrapping
// ErrInvalidFlow when one is invalid or the families differ.
func family(aps ...netip.AddrPort) (byte, error) {
	var fam byte
	for _, ap := range aps {
		a := ap.Addr()
		var f byte
		switch {
		case !a.IsValid():
			return 0, fmt.Errorf("%w: invalid address %v", ErrInvalidFlow, ap)
		case a.Is4():
			f = familyV4
		default:
			f = familyV6
		}
		if fam != 0 && f != fam {
			return 0, fmt.Errorf("%w: mixed address families", ErrInvalidFlow)
		}
		fam = f
	}
	return fam, nil
}

func flowFamily(f *Flow) (byte, error) {
	return family(f.Orig.Src, f.Orig.Dst, f.Reply.Src, f.Reply.Dst)
}

// packedKey is a Key in a pointer-free form (netip.Addr holds a pointer for its zone), so that
// maps of a million keys cost the garbage collector nothing to scan:
// proto, family, source address (16 bytes, IPv4 in the first 4), source port, destination
// address, destination port.
type packedKey [38]byte

// packKey packs a key whose addresses are known to be valid and of family fam.
func packKey(proto, fam byte, orig Tuple) packedKey {
	var k packedKey
	k[0], k[1] = proto, fam
	putAddrPort(k[2:20], orig.Src, fam)
	putAddrPort(k[20:38], orig.Dst, fam)
	return k
}

func putAddrPort(b []byte, ap netip.AddrPort, fam byte) {
	a := ap.Addr()
	if fam == familyV4 {
		a4 := a.As4()
		copy(b, a4[:])
	} else {
		a16 := a.As16()
		copy(b, a16[:])
	}
	b[16], b[17] = byte(ap.Port()>>8), byte(ap.Port())
}

func getAddrPort(b []byte, fam byte) netip.AddrPort {
	var a netip.Addr
	if fam == familyV4 {
		a = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		a = netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.AddrPortFrom(a, uint16(b[16])<<8|uint16(b[17]))
}

// flow returns the flow that the key identifies, with only Proto and Orig set: what
// FlowWriter.Delete needs.
func (k *packedKey) flow() Flow {
	return Flow{Proto: k[0], Orig: Tuple{Src: getAddrPort(k[2:20], k[1]), Dst: getAddrPort(k[20:38], k[1])}}
}
