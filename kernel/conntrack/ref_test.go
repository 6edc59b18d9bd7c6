package conntrack

// The decoders that this package used before it decoded entries itself: ti-mo/conntrack's
// Event.Unmarshal and a conversion. They are the reference that decode.go is checked
// against (TestDecodeMatches, FuzzDecode).

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
