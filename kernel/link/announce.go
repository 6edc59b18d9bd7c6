package link

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// writeTimeout bounds one packet write, so a stuck device cannot hold Announce past its
// schedule (and past the caller's cancellation) for long.
const writeTimeout = time.Second

// Announcer tells the hosts on a segment that addresses now live on this device: for IPv4
// with gratuitous ARP, for IPv6 with unsolicited neighbour advertisements. It works as
// MetalLB's layer-2 announcer does: send at once, then repeat for a while, because a
// single frame can be lost and a host may be busy. It counts what it sends.
//
// An Announcer holds no socket between calls; its methods are safe for concurrent use,
// and it needs no closing.
type Announcer struct {
	logger *slog.Logger
	sent   atomic.Uint64
	failed atomic.Uint64
}

// NewAnnouncer returns an Announcer that logs to logger (nil discards the log).
func NewAnnouncer(logger *slog.Logger) *Announcer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Announcer{logger: logger.With("component", "announcer")}
}

// Sent returns the number of packets (ARP and neighbour advertisements) that every
// Announce call of a has sent so far. Safe for concurrent use.
func (a *Announcer) Sent() uint64 { return a.sent.Load() }

// Failed returns the number of packets that Announce tried to send and could not.
// Safe for concurrent use.
func (a *Announcer) Failed() uint64 { return a.failed.Load() }

// Announce announces addrs on interface ifname with this interface's MAC address, in
// rounds: one round at once, then repeat more rounds, interval apart. It returns when the
// last round is sent or ctx is done (then with ctx's error), with the number of packets
// sent. The addresses need not be on the interface, but the kernel will only answer for
// them once they are: add them first.
//
// A round sends, for each IPv4 address, a gratuitous ARP request and a gratuitous ARP
// reply, both to the Ethernet broadcast address with sender IP = target IP = the address:
//   - the request is an ARP Announcement (RFC 5227 section 3) and carries target MAC
//     00:00:00:00:00:00 ("ignored and SHOULD be set to all zeroes", section 2.1.1);
//   - the reply carries target MAC = sender MAC, which is what makes Linux treat a reply
//     as gratuitous (arp_is_garp in net/ipv4/arp.c) and what RFC 5944 section 4.6 asks.
//
// Hosts differ in which of the two they heed, hence both. Linux updates an existing
// neighbour entry from either, but creates one only with arp_accept=1.
//
// For each IPv6 address a round sends one unsolicited neighbour advertisement (RFC 4861
// section 7.2.6) to all-nodes (ff02::1) with hop limit 255, the Override flag, the Router
// flag when the interface forwards IPv6 (as the kernel's own ndisc_send_unsol_na does), and
// the target link-layer address option. Its source address is the one the kernel picks
// for ff02::1 on the interface (normally the link-local one). Receivers update an existing
// neighbour entry; as with ARP they create none unless configured to (accept_untracked_na).
//
// IPv4-mapped IPv6 addresses are announced as IPv4; duplicates are announced once. An
// address that cannot be sent to is logged, left out of later rounds, and its error is
// joined into the one Announce returns; the others carry on. Announce needs CAP_NET_RAW
// and an interface with an Ethernet address. It opens its sockets in the calling thread's
// network namespace and closes them before it returns.
func (a *Announcer) Announce(ctx context.Context, ifname string, addrs []netip.Addr, repeat int, interval time.Duration) (int, error) {
	if repeat < 0 || (repeat > 0 && interval <= 0) {
		return 0, fmt.Errorf("announce on %s: repeat %d every %s: %w", ifname, repeat, interval, ErrInvalidArgument)
	}
	v4, v6, err := splitAddrs(addrs)
	if err != nil {
		return 0, fmt.Errorf("announce on %s: %w", ifname, err)
	}
	if len(v4) == 0 && len(v6) == 0 {
		return 0, nil
	}
	l, err := linkByName(ifname)
	if err != nil {
		return 0, fmt.Errorf("announce on %s: %w", ifname, err)
	}
	attrs := l.Attrs()
	if len(attrs.HardwareAddr) != 6 {
		return 0, fmt.Errorf("announce on %s: interface has no Ethernet address (%q): %w", ifname, attrs.HardwareAddr, ErrInvalidArgument)
	}
	ifi := &net.Interface{Index: attrs.Index, MTU: attrs.MTU, Name: attrs.Name, HardwareAddr: attrs.HardwareAddr}

	tx := &transport{hw: ifi.HardwareAddr}
	defer tx.close()
	if len(v4) > 0 {
		if tx.arp, err = listenARP(ifi); err != nil {
			return 0, fmt.Errorf("announce on %s: %w", ifname, err)
		}
	}
	if len(v6) > 0 {
		if tx.nd, tx.ndDst, err = listenND(ifi); err != nil {
			return 0, fmt.Errorf("announce on %s: %w", ifname, err)
		}
		// Best effort: without the sysctl (IPv6 disabled) the Router flag stays clear.
		if v, err := GetSysctl("net/ipv6/conf/" + ifname + "/forwarding"); err == nil && v != "0" {
			tx.router = true
		}
	}
	return a.announce(ctx, tx, ifname, append(v4, v6...), repeat, interval)
}

// announce runs the rounds over tx; it is Announce without the kernel, so tests can give
// it fake connections.
func (a *Announcer) announce(ctx context.Context, tx *transport, ifname string, addrs []netip.Addr, repeat int, interval time.Duration) (int, error) {
	log := a.logger.With("interface", ifname)
	live := addrs
	var (
		n    int
		errs []error
	)
	for round := 0; ; round++ {
		if err := ctx.Err(); err != nil {
			return n, a.finish(log, n, errors.Join(append(errs, fmt.Errorf("announce on %s: %w", ifname, err))...))
		}
		next := live[:0:0]
		for _, addr := range live {
			sent, err := tx.send(addr)
			n += sent
			a.sent.Add(uint64(sent))
			if err != nil {
				a.failed.Add(1)
				log.Warn("announce failed; dropping address from later rounds", "addr", addr, "round", round, slog.Any("err", err))
				errs = append(errs, fmt.Errorf("announce %s on %s: %w", addr, ifname, err))
				continue
			}
			next = append(next, addr)
		}
		live = next
		if round == repeat || len(live) == 0 {
			return n, a.finish(log, n, errors.Join(errs...))
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

func (a *Announcer) finish(log *slog.Logger, n int, err error) error {
	if err != nil {
		log.Info("announce ended early or with errors", "sent", n, slog.Any("err", err))
		return err
	}
	log.Debug("announced", "sent", n)
	return nil
}

// splitAddrs validates and de-duplicates addrs, unmapping IPv4-mapped ones.
func splitAddrs(addrs []netip.Addr) (v4, v6 []netip.Addr, err error) {
	seen := make(map[netip.Addr]bool, len(addrs))
	for _, addr := range addrs {
		if !addr.IsValid() {
			return nil, nil, fmt.Errorf("invalid address: %w", ErrInvalidArgument)
		}
		addr = addr.Unmap().WithZone("")
		if seen[addr] {
			continue
		}
		seen[addr] = true
		if addr.Is4() {
			v4 = append(v4, addr)
		} else {
			v6 = append(v6, addr)
		}
	}
	return v4, v6, nil
}

// transport holds the sockets of one Announce call.
type transport struct {
	hw     net.HardwareAddr
	arp    net.PacketConn // AF_PACKET socket bound to the interface, ARP EtherType
	nd     net.PacketConn // raw ICMPv6 socket, multicast sent out of the interface
	ndDst  net.Addr       // ff02::1 on the interface
	router bool           // set the NA Router flag
}

// send sends one round for addr and returns how many packets went out.
func (tx *transport) send(addr netip.Addr) (int, error) {
	if addr.Is4() {
		return tx.sendARP(addr)
	}
	b, err := neighborAdvertisement(tx.hw, addr, tx.router)
	if err != nil {
		return 0, err
	}
	if err := tx.nd.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return 0, fmt.Errorf("set write deadline: %w", err)
	}
	if _, err := tx.nd.WriteTo(b, tx.ndDst); err != nil {
		return 0, fmt.Errorf("send neighbour advertisement: %w", err)
	}
	return 1, nil
}

func (tx *transport) sendARP(addr netip.Addr) (int, error) {
	if err := tx.arp.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return 0, fmt.Errorf("set write deadline: %w", err)
	}
	n := 0
	for _, op := range []arp.Operation{arp.OperationRequest, arp.OperationReply} {
		frame, err := garpFrame(op, tx.hw, addr)
		if err != nil {
			return n, err
		}
		if _, err := tx.arp.WriteTo(frame, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
			return n, fmt.Errorf("send gratuitous ARP %s: %w", op, err)
		}
		n++
	}
	return n, nil
}

func (tx *transport) close() {
	if tx.arp != nil {
		tx.arp.Close()
	}
	if tx.nd != nil {
		tx.nd.Close()
	}
}

// garpFrame builds the broadcast Ethernet frame of a gratuitous ARP request or reply for
// addr from hw. It does what arp.Client.WriteTo does, without arp.Client: a Client insists
// that the interface have an IPv4 address of its own, which a gratuitous ARP does not need
// (the sender IP is the announced address).
func garpFrame(op arp.Operation, hw net.HardwareAddr, addr netip.Addr) ([]byte, error) {
	target := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	if op == arp.OperationReply {
		target = hw
	}
	p, err := arp.NewPacket(op, hw, addr, target, addr)
	if err != nil {
		return nil, fmt.Errorf("build gratuitous ARP %s for %s: %w", op, addr, err)
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("build gratuitous ARP %s for %s: %w", op, addr, err)
	}
	f := &ethernet.Frame{
		Destination: ethernet.Broadcast,
		Source:      hw,
		EtherType:   ethernet.EtherTypeARP,
		Payload:     pb,
	}
	return f.MarshalBinary()
}

// neighborAdvertisement builds the ICMPv6 message of an unsolicited neighbour
// advertisement for target (RFC 4861 section 4.4). The checksum is left zero: the kernel
// fills it in for raw ICMPv6 sockets (RFC 3542 section 3.1).
func neighborAdvertisement(hw net.HardwareAddr, target netip.Addr, router bool) ([]byte, error) {
	const (
		flagRouter   = 1 << 31
		flagOverride = 1 << 29
		optTargetLL  = 2 // Target Link-Layer Address option
	)
	body := make([]byte, 4+16+8)
	flags := uint32(flagOverride)
	if router {
		flags |= flagRouter
	}
	binary.BigEndian.PutUint32(body[0:4], flags)
	t := target.As16()
	copy(body[4:20], t[:])
	body[20] = optTargetLL
	body[21] = 1 // option length in units of 8 octets
	copy(body[22:28], hw)
	m := icmp.Message{Type: ipv6.ICMPTypeNeighborAdvertisement, Body: &icmp.RawBody{Data: body}}
	b, err := m.Marshal(nil)
	if err != nil {
		return nil, fmt.Errorf("build neighbour advertisement for %s: %w", target, err)
	}
	return b, nil
}

// listenARP opens an AF_PACKET socket on ifi for sending ARP. It never reads, so a BPF
// filter that accepts nothing keeps the segment's ARP traffic from queueing on it.
func listenARP(ifi *net.Interface) (net.PacketConn, error) {
	drop, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, fmt.Errorf("assemble drop filter: %w", err)
	}
	c, err := packet.Listen(ifi, packet.Raw, int(ethernet.EtherTypeARP), &packet.Config{Filter: drop})
	if err != nil {
		return nil, fmt.Errorf("open packet socket: %w", err)
	}
	return c, nil
}

// listenND opens a raw ICMPv6 socket that sends multicast out of ifi with hop limit 255
// (receivers drop neighbour discovery with any other, RFC 4861 section 7.1.2) and receives
// nothing.
func listenND(ifi *net.Interface) (net.PacketConn, net.Addr, error) {
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, nil, fmt.Errorf("open ICMPv6 socket: %w", err)
	}
	p := c.IPv6PacketConn()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	for _, set := range []func() error{
		func() error { return p.SetICMPFilter(&f) },
		func() error { return p.SetMulticastInterface(ifi) },
		func() error { return p.SetMulticastHopLimit(255) },
		func() error { return p.SetMulticastLoopback(false) },
	} {
		if err := set(); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("set up ICMPv6 socket: %w", err)
		}
	}
	// The zone is the index, not the name: Go maps zone names through a process-wide
	// cache, which may hold another namespace's interfaces.
	dst := &net.IPAddr{IP: net.IPv6linklocalallnodes, Zone: strconv.Itoa(ifi.Index)}
	return c, dst, nil
}
