// Package nft programs the appliance's load-balancing NAT rules into one nftables table.
//
// The desired state (a Ruleset of virtual servers) is turned into table content by pure
// builders, and Table.Apply replaces the kernel's table with it in one netlink batch, so
// the change is atomic and applying the same Ruleset again is harmless. The package owns
// the one table it is given and touches nothing else in the namespace.
package nft

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// maxNameLen bounds Virtual.Name: it becomes a rule comment, and nft refuses comments
// longer than 128 bytes (NFT_USERDATA_MAXLEN is 256 for the whole userdata).
const maxNameLen = 128

// Virtual is one virtual server: traffic to Dest (Proto) from Source is load-balanced
// round-robin over Members (DNAT), and its source translated to SNAT (if any).
type Virtual struct {
	Name    string           // e.g. "/RPC/RPC_VS_GALERA", put into rule comments
	Proto   uint8            // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	Dest    netip.AddrPort   // virtual address and port; port 0 = any port
	Source  netip.Prefix     // allowed client sources; zero Prefix = any
	Members []netip.AddrPort // pool members; a member port 0 = keep the client's destination port
	SNAT    []netip.Addr     // SNAT pool addresses; empty = keep the client's source
}

// Ruleset is the whole desired state of the appliance's table.
type Ruleset struct {
	Virtuals []Virtual
	// NotrackMark, if not zero, exempts from conntrack the packets this host sends with
	// that firewall mark (SO_MARK): the crafted packets that resume connections after a
	// takeover, which conntrack would otherwise take for the connections' own and NAT.
	NotrackMark uint32
}

// Validate reports the first problem in rs, naming the virtual. Every error wraps
// ErrInvalid. A valid Ruleset always builds: Apply only fails on it for kernel reasons.
func (rs Ruleset) Validate() error {
	names := make(map[string]int, len(rs.Virtuals))
	type key struct {
		proto uint8
		dest  netip.AddrPort
	}
	dests := make(map[key]string, len(rs.Virtuals))
	for i, v := range rs.Virtuals {
		if err := v.validate(); err != nil {
			if v.Name == "" {
				return fmt.Errorf("%w: virtual #%d: %w", ErrInvalid, i, err)
			}
			return fmt.Errorf("%w: virtual %q: %w", ErrInvalid, v.Name, err)
		}
		if j, ok := names[v.Name]; ok {
			return fmt.Errorf("%w: virtual %q: name also used by virtual #%d", ErrInvalid, v.Name, j)
		}
		names[v.Name] = i
		k := key{v.Proto, v.Dest}
		if other, ok := dests[k]; ok {
			return fmt.Errorf("%w: virtual %q: destination %s %s already used by virtual %q",
				ErrInvalid, v.Name, protoName(v.Proto), v.Dest, other)
		}
		dests[k] = v.Name
	}
	return nil
}

// validate checks one virtual on its own; Ruleset.Validate adds the name to the error.
func (v Virtual) validate() error {
	switch {
	case v.Name == "":
		return fmt.Errorf("empty name")
	case len(v.Name) > maxNameLen:
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	}
	if v.Proto != unix.IPPROTO_TCP && v.Proto != unix.IPPROTO_UDP {
		return fmt.Errorf("unsupported protocol %d (want tcp or udp)", v.Proto)
	}
	if err := checkAddr("destination", v.Dest.Addr()); err != nil {
		return err
	}
	if v.Dest.Addr().IsUnspecified() {
		return fmt.Errorf("destination %s is unspecified", v.Dest)
	}
	is4 := v.Dest.Addr().Is4()
	if v.Source.IsValid() {
		if err := checkAddr("source", v.Source.Addr()); err != nil {
			return err
		}
		if v.Source.Addr().Is4() != is4 {
			return fmt.Errorf("source %s and destination %s are of different address families", v.Source, v.Dest)
		}
	}
	seen := make(map[netip.AddrPort]bool, len(v.Members))
	withPort := 0
	for _, m := range v.Members {
		if err := checkAddr("pool member", m.Addr()); err != nil {
			return err
		}
		if m.Addr().Is4() != is4 {
			return fmt.Errorf("pool member %s and destination %s are of different address families", m, v.Dest)
		}
		if m.Addr().IsUnspecified() {
			return fmt.Errorf("pool member %s is unspecified", m)
		}
		if seen[m] {
			return fmt.Errorf("pool member %s listed twice", m)
		}
		seen[m] = true
		if m.Port() != 0 {
			withPort++
		}
	}
	// One map holds either address.port or address alone for every member; on an
	// any-port virtual a port-0 member cannot be given a fixed port to share the map.
	if v.Dest.Port() == 0 && withPort != 0 && withPort != len(v.Members) {
		return fmt.Errorf("any-port destination %s mixes pool members with and without a port", v.Dest)
	}
	seenSNAT := make(map[netip.Addr]bool, len(v.SNAT))
	for _, a := range v.SNAT {
		if err := checkAddr("snat address", a); err != nil {
			return err
		}
		if a.Is4() != is4 {
			return fmt.Errorf("snat address %s and destination %s are of different address families", a, v.Dest)
		}
		if a.IsUnspecified() {
			return fmt.Errorf("snat address %s is unspecified", a)
		}
		if seenSNAT[a] {
			return fmt.Errorf("snat address %s listed twice", a)
		}
		seenSNAT[a] = true
	}
	return nil
}

// checkAddr refuses what the builder cannot encode unambiguously: a missing address, a
// zone (nftables has none) and IPv4-mapped IPv6 (which family would it be?).
func checkAddr(what string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s missing", what)
	case a.Zone() != "":
		return fmt.Errorf("%s %s has a zone", what, a)
	case a.Is4In6():
		return fmt.Errorf("%s %s is IPv4-mapped IPv6; give it as IPv4", what, a)
	}
	return nil
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return fmt.Sprintf("proto %d", p)
}
