package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds the retries of an address dump that the kernel reports as
// interrupted (NLM_F_DUMP_INTR: the list changed while it was being read).
const dumpRetries = 5

// AddAddress puts p (the interface's address with its prefix length, for example
// 10.1.10.20/24) on interface ifname. It returns nil when p is already there, whoever put
// it there, so it may be called again with the same arguments.
//
// IPv6 addresses are added without duplicate address detection (IFA_F_NODAD), as
// keepalived adds its virtual addresses: a floating address moves here while the old
// active may still hold it for a moment, and with DAD it would stay tentative (unusable)
// for a second or end up "dadfailed" and never work.
//
// An IPv4 address may sit on one interface with several prefix lengths, so adding
// 10.1.10.20/32 next to 10.1.10.20/24 adds a second entry. The kernel keys an IPv6 address
// by the address alone: adding 2001:db8::1/64 when 2001:db8::1/128 is there fails with an
// error that wraps ErrPrefixConflict.
func AddAddress(ifname string, p netip.Prefix) error {
	if err := checkPrefix(p); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, ifname, err)
	}
	l, err := linkByName(ifname)
	if err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, ifname, err)
	}
	a := toNetlinkAddr(p)
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	err = netlink.AddrAdd(l, a)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s: %w", p, ifname, err)
	}
	// EEXIST: the address is there, but for IPv6 maybe with another prefix length.
	have, lerr := addresses(l)
	if lerr != nil {
		return fmt.Errorf("add address %s to %s: %w (and list addresses: %w)", p, ifname, err, lerr)
	}
	for _, h := range have {
		if h == p {
			return nil
		}
	}
	for _, h := range have {
		if h.Addr() == p.Addr() {
			return fmt.Errorf("add address %s to %s: %s is there: %w: %w", p, ifname, h, ErrPrefixConflict, err)
		}
	}
	return fmt.Errorf("add address %s to %s: %w", p, ifname, err)
}

// DeleteAddress removes p (address and prefix length, as given to AddAddress) from
// interface ifname. It returns nil when p is not there. The same address with another
// prefix length is not p and is left alone.
func DeleteAddress(ifname string, p netip.Prefix) error {
	if err := checkPrefix(p); err != nil {
		return fmt.Errorf("delete address %s from %s: %w", p, ifname, err)
	}
	l, err := linkByName(ifname)
	if err != nil {
		return fmt.Errorf("delete address %s from %s: %w", p, ifname, err)
	}
	// The kernel answers EADDRNOTAVAIL when no address matches both the address and the
	// prefix length (inet_rtm_deladdr in net/ipv4/devinet.c, inet6_addr_del in
	// net/ipv6/addrconf.c).
	if err := netlink.AddrDel(l, toNetlinkAddr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %s: %w", p, ifname, err)
	}
	return nil
}

// Addresses lists the addresses on interface ifname, IPv4 and IPv6 (link-local included),
// each with its prefix length, in the kernel's order. An address with a peer
// (point-to-point) is listed as the local address with the peer's prefix length.
func Addresses(ifname string) ([]netip.Prefix, error) {
	l, err := linkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	ps, err := addresses(l)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	return ps, nil
}

// InterfaceUp reports whether interface ifname exists and is both administratively up
// (IFF_UP) and operationally up: carrier present (IFF_LOWER_UP) and operstate "up", or
// "unknown", which is what drivers that do not track operstate report, such as loopback
// (Documentation/networking/operstates.rst). A veth whose peer is down is administratively
// up but "lowerlayerdown", and so not up. The carrier flag is checked as well as the
// operstate because the kernel moves the operstate from a delayed work item (linkwatch),
// up to a second after the carrier changes.
//
// A missing interface is reported as (false, nil): for a failsafe, an interface that is
// gone is down. The error is for a failed query.
func InterfaceUp(ifname string) (bool, error) {
	l, err := linkByName(ifname)
	if errors.Is(err, ErrNoInterface) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("query interface %s: %w", ifname, err)
	}
	return linkUp(l.Attrs()), nil
}

func linkUp(a *netlink.LinkAttrs) bool {
	const want = unix.IFF_UP | unix.IFF_LOWER_UP
	if a.RawFlags&want != want {
		return false
	}
	return a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown
}

// linkByName looks ifname up in the calling thread's namespace; a missing link is
// ErrNoInterface.
func linkByName(ifname string) (netlink.Link, error) {
	if ifname == "" {
		return nil, fmt.Errorf("empty interface name: %w", ErrInvalidArgument)
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, ErrNoInterface
		}
		return nil, err
	}
	return l, nil
}

func addresses(l netlink.Link) ([]netip.Prefix, error) {
	var (
		as  []netlink.Addr
		err error
	)
	for range dumpRetries {
		as, err = netlink.AddrList(l, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	ps := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		p, ok := fromNetlinkAddr(a)
		if !ok {
			return nil, fmt.Errorf("kernel listed an unreadable address %v", a)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// checkPrefix refuses what cannot be put on an interface as asked: an invalid prefix, and
// an IPv4-mapped IPv6 address (::ffff:a.b.c.d), which vishvananda/netlink would send to the
// kernel as IPv4 with an IPv6 prefix length. (A netip.Prefix never carries a zone.)
func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix: %w", ErrInvalidArgument)
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("IPv4-mapped IPv6 address: %w", ErrInvalidArgument)
	}
	return nil
}

// toNetlinkAddr keeps the host bits of p: 10.1.10.20/24 is the address 10.1.10.20 on the
// subnet 10.1.10.0/24.
func toNetlinkAddr(p netip.Prefix) *netlink.Addr {
	a := p.Addr()
	return &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(a.AsSlice()),
		Mask: net.CIDRMask(p.Bits(), a.BitLen()),
	}}
}

func fromNetlinkAddr(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	// The kernel sends 4 bytes for an IPv4 address and 16 for IPv6, so the length tells
	// the family (an IPv4-mapped IPv6 address stays IPv6).
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	mask := a.Mask
	if a.Peer != nil {
		mask = a.Peer.Mask
	}
	bits, size := mask.Size()
	if size != ip.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, bits), true
}
