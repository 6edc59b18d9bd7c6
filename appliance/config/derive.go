package config

import (
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// Clone returns a deep copy, so that a new generation can be built without touching the running one.
func (c Config) Clone() Config {
	n := c
	n.Local.Device = c.Local.Device.clone()
	n.Local.Peers = cloneEach(c.Local.Peers, Device.clone)
	n.Local.DeviceGroups = cloneEach(c.Local.DeviceGroups, func(g DeviceGroup) DeviceGroup { g.Devices = slices.Clone(g.Devices); return g })
	n.Local.VLANs = cloneEach(c.Local.VLANs, func(v VLAN) VLAN { v.Interfaces = slices.Clone(v.Interfaces); return v })
	n.Local.Selfs = slices.Clone(c.Local.Selfs)
	if c.Local.DB != nil {
		n.Local.DB = make(map[string]string, len(c.Local.DB))
		for k, v := range c.Local.DB {
			n.Local.DB[k] = v
		}
	}
	n.Shared = c.Shared.Clone()
	return n
}

// Clone returns a deep copy of the shared part.
func (s Shared) Clone() Shared {
	n := s
	n.Partitions = slices.Clone(s.Partitions)
	n.Pools = cloneEach(s.Pools, func(p Pool) Pool { p.Members = slices.Clone(p.Members); return p })
	n.SNATPools = cloneEach(s.SNATPools, func(p SNATPool) SNATPool { p.Members = slices.Clone(p.Members); return p })
	n.Virtuals = cloneEach(s.Virtuals, func(v Virtual) Virtual { v.Profiles = slices.Clone(v.Profiles); return v })
	n.Users = cloneEach(s.Users, func(u User) User { u.PartitionAccess = slices.Clone(u.PartitionAccess); return u })
	return n
}

func (d Device) clone() Device {
	d.UnicastAddresses = slices.Clone(d.UnicastAddresses)
	return d
}

func cloneEach[T any](in []T, f func(T) T) []T {
	if in == nil {
		return nil
	}
	out := make([]T, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

// NetTimeout returns failover.nettimeout as a duration.
func (c *Config) NetTimeout() time.Duration {
	f, err := strconv.ParseFloat(c.DBValue(DBFailoverNetTimeout), 64)
	if err != nil || f <= 0 {
		f = 3
	}
	return time.Duration(f * float64(time.Second))
}

// FloatingAddress is an address that belongs to traffic-group-1: present on the Active
// device only, on the interface of the VLAN whose self IP subnet holds it.
type FloatingAddress struct {
	Addr      netip.Addr
	VLAN      string // empty when no self IP subnet holds the address
	Interface string
	Owner     string // the object it comes from, for logs
}

// FloatingAddresses returns the virtual addresses of enabled virtuals and the addresses of
// the SNAT pools they use, each once, in a stable order.
func (c *Config) FloatingAddresses() []FloatingAddress {
	var out []FloatingAddress
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr, owner string) {
		if seen[a] {
			return
		}
		seen[a] = true
		fa := FloatingAddress{Addr: a, Owner: owner}
		if self, ok := c.SelfFor(a); ok {
			fa.VLAN = self.VLAN
			if v, i := c.Local.FindVLAN(self.VLAN); i >= 0 && len(v.Interfaces) > 0 {
				fa.Interface = v.Interfaces[0]
			}
		}
		out = append(out, fa)
	}
	for _, v := range c.Shared.Virtuals {
		if v.Disabled {
			continue
		}
		add(v.Destination.Addr(), "virtual address of "+v.Name)
		if v.SNATType == "snat" {
			if sp, i := c.Shared.FindSNATPool(v.SNATPool); i >= 0 {
				for _, m := range sp.Members {
					add(m, "snatpool "+sp.Name)
				}
			}
		}
	}
	return out
}

// SelfFor returns the self IP whose subnet holds a, preferring the longest prefix.
func (c *Config) SelfFor(a netip.Addr) (Self, bool) {
	best, found := Self{}, false
	for _, s := range c.Local.Selfs {
		if s.Address.Masked().Contains(a) && (!found || s.Address.Bits() > best.Address.Bits()) {
			best, found = s, true
		}
	}
	return best, found
}

// NextVSIndex returns a vs-index not used by any virtual.
func (s *Shared) NextVSIndex() int {
	n := 1
	for _, v := range s.Virtuals {
		if v.VSIndex >= n {
			n = v.VSIndex + 1
		}
	}
	return n
}
