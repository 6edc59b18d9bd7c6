package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:-]*$`)

// Supported enumerations; anything else is refused with the list of what is.
var (
	DeviceGroupTypes   = []string{"sync-failover", "sync-only"}
	IPProtocols        = []string{"tcp", "udp"}
	LoadBalancingModes = []string{"round-robin"}
	ServiceDownActions = []string{"none", "reset", "drop", "reselect"}
	SNATTypes          = []string{"none", "snat"}
	Profiles           = []string{"fastL4"}
	TrafficGroups      = []string{LocalOnlyTrafficGroup, FloatingTrafficGroup}
)

// ValidName reports whether a short object name is acceptable.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// Validate checks the whole configuration and returns the first problem, naming the object.
func (c *Config) Validate() error {
	if err := c.validateLocal(); err != nil {
		return err
	}
	return c.validateShared()
}

func (c *Config) validateLocal() error {
	l := &c.Local
	if !ValidName(l.Device.Name) {
		return Invalid("device name %q is not a valid name", l.Device.Name)
	}
	devices := []Device{l.Device}
	for _, p := range l.Peers {
		if !ValidName(p.Name) {
			return Invalid("cm device name %q is not a valid name", p.Name)
		}
		if slices.ContainsFunc(devices, func(d Device) bool { return d.Name == p.Name }) {
			return Exists("cm device", p.Name, CommonPartition)
		}
		devices = append(devices, p)
	}
	for _, d := range devices {
		if err := validateDeviceAddresses(d); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, g := range l.DeviceGroups {
		if seen[g.Name] {
			return Exists("cm device-group", g.Name, CommonPartition)
		}
		seen[g.Name] = true
		if !slices.Contains(DeviceGroupTypes, g.Type) {
			return Invalid("cm device-group %s: type %q must be one of %v", g.Name, g.Type, DeviceGroupTypes)
		}
		for _, d := range g.Devices {
			if d != l.Device.Name {
				if _, ok := c.FindPeer(d); !ok {
					return NotFound("device", "/Common/"+d)
				}
			}
		}
	}
	if n := failoverGroups(c); n > 1 {
		return Invalid("this device is in %d sync-failover device groups; it may be in one", n)
	}
	seen = map[string]bool{}
	for _, v := range l.VLANs {
		if seen[v.Name] {
			return Exists("vlan", "/Common/"+v.Name, CommonPartition)
		}
		seen[v.Name] = true
		for _, ifname := range v.Interfaces {
			if ifname == "" || len(ifname) > 15 {
				return Invalid("net vlan %s: interface name %q is not a Linux interface name", v.Name, ifname)
			}
		}
	}
	seen = map[string]bool{}
	addrs := map[netip.Addr]string{}
	for _, s := range l.Selfs {
		if seen[s.Name] {
			return Exists("self IP", "/Common/"+s.Name, CommonPartition)
		}
		seen[s.Name] = true
		if !s.Address.IsValid() {
			return Invalid("net self %s: an address with its netmask is required, such as 10.0.0.2/24", s.Name)
		}
		if _, i := l.FindVLAN(s.VLAN); i < 0 {
			return NotFound("vlan", "/Common/"+s.VLAN)
		}
		if s.TrafficGroup != "" && !slices.Contains(TrafficGroups, s.TrafficGroup) {
			return NotFound("traffic group", "/Common/"+s.TrafficGroup)
		}
		if other, dup := addrs[s.Address.Addr()]; dup {
			return Invalid("net self %s: address %s is already used by self IP %s", s.Name, s.Address.Addr(), other)
		}
		addrs[s.Address.Addr()] = s.Name
	}
	for name, value := range l.DB {
		if err := ValidateDB(name, value); err != nil {
			return err
		}
	}
	return nil
}

func validateDeviceAddresses(d Device) error {
	for _, a := range d.UnicastAddresses {
		if !a.IsValid() {
			return Invalid("cm device %s: unicast-address is not an IP address", d.Name)
		}
	}
	return nil
}

func failoverGroups(c *Config) int {
	n := 0
	for _, g := range c.Local.DeviceGroups {
		if g.Type == "sync-failover" && slices.Contains(g.Devices, c.Local.Device.Name) {
			n++
		}
	}
	return n
}

// ValidateDB checks a sys db variable assignment.
func ValidateDB(name, value string) error {
	switch name {
	case DBFailoverNetTimeout:
		f, err := strconv.ParseFloat(value, 64)
		if err != nil || f < 0.01 || f > 3600 {
			return Invalid("sys db %s: value %q must be a number of seconds between 0.01 and 3600", name, value)
		}
		return nil
	}
	return NotFound("db variable", name)
}

func (c *Config) validateShared() error {
	s := &c.Shared
	if _, i := s.FindPartition(CommonPartition); i < 0 {
		return Invalid("partition Common is missing")
	}
	seen := map[string]bool{}
	for _, p := range s.Partitions {
		if seen[p.Name] {
			return Exists("partition", p.Name, p.Name)
		}
		seen[p.Name] = true
		if !ValidName(p.Name) {
			return Invalid("auth partition %q is not a valid name", p.Name)
		}
	}
	selfs := map[netip.Addr]string{}
	for _, sf := range c.Local.Selfs {
		selfs[sf.Address.Addr()] = sf.Name
	}
	objects := map[string]string{} // full path -> kind; BIG-IP keeps one namespace per kind
	check := func(kind, path string) error {
		part, name := SplitPath(path)
		if !ValidName(name) {
			return Invalid("%s %s: %q is not a valid name", kind, path, name)
		}
		if _, i := s.FindPartition(part); i < 0 {
			return NotFound("folder", "/"+part)
		}
		if objects[kind+path] != "" {
			return Exists(kind, path, part)
		}
		objects[kind+path] = kind
		return nil
	}
	for _, p := range s.Pools {
		if err := check("pool", p.Name); err != nil {
			return err
		}
		if err := validatePool(&p); err != nil {
			return err
		}
	}
	for _, sp := range s.SNATPools {
		if err := check("snatpool", sp.Name); err != nil {
			return err
		}
		if len(sp.Members) == 0 {
			return Invalid("ltm snatpool %s: a snatpool needs at least one member", sp.Name)
		}
		for _, m := range sp.Members {
			if !m.IsValid() {
				return Invalid("ltm snatpool %s: member is not an IP address", sp.Name)
			}
			if self, ok := selfs[m]; ok {
				return Invalid("ltm snatpool %s: member %s is self IP %s: SNAT addresses float between the devices and must be addresses of their own", sp.Name, m, self)
			}
		}
	}
	dests := map[string]string{}
	indexes := map[int]string{}
	for i := range s.Virtuals {
		v := &s.Virtuals[i]
		if err := check("virtual", v.Name); err != nil {
			return err
		}
		if err := c.validateVirtual(v); err != nil {
			return err
		}
		if self, ok := selfs[v.Destination.Addr()]; ok {
			return Invalid("ltm virtual %s: destination address %s is self IP %s: a virtual address floats between the devices and must be an address of its own", v.Name, v.Destination.Addr(), self)
		}
		key := v.IPProtocol + " " + v.Destination.String()
		if other, dup := dests[key]; dup {
			return Invalid("ltm virtual %s: destination %s (%s) is already used by virtual %s", v.Name, v.Destination, v.IPProtocol, other)
		}
		dests[key] = v.Name
		if other, dup := indexes[v.VSIndex]; dup && v.VSIndex != 0 {
			return Invalid("ltm virtual %s: vs-index %d is already used by virtual %s", v.Name, v.VSIndex, other)
		}
		indexes[v.VSIndex] = v.Name
	}
	return validateUsers(s.Users)
}

func validatePool(p *Pool) error {
	if p.LoadBalancingMode != "" && !slices.Contains(LoadBalancingModes, p.LoadBalancingMode) {
		return Invalid("ltm pool %s: load-balancing-mode %s is not supported (supported: %v)", p.Name, p.LoadBalancingMode, LoadBalancingModes)
	}
	if p.ServiceDownAction != "" && !slices.Contains(ServiceDownActions, p.ServiceDownAction) {
		return Invalid("ltm pool %s: service-down-action %q must be one of %v", p.Name, p.ServiceDownAction, ServiceDownActions)
	}
	if p.SlowRampTime < 0 {
		return Invalid("ltm pool %s: slow-ramp-time must not be negative", p.Name)
	}
	seen := map[netip.AddrPort]bool{}
	var family netip.Addr
	for _, m := range p.Members {
		if !m.Address.Addr().IsValid() {
			return Invalid("ltm pool %s: member address is not an IP address and port", p.Name)
		}
		if seen[m.Address] {
			return Exists("pool member", fmt.Sprintf("%s %s", p.Name, m.Address), "")
		}
		seen[m.Address] = true
		if family.IsValid() && family.Is4() != m.Address.Addr().Is4() {
			return Invalid("ltm pool %s: members mix IPv4 and IPv6", p.Name)
		}
		family = m.Address.Addr()
	}
	return nil
}

func (c *Config) validateVirtual(v *Virtual) error {
	s := &c.Shared
	if !v.Destination.Addr().IsValid() {
		return Invalid("ltm virtual %s: destination must be an address and port, such as 10.0.0.10:3306", v.Name)
	}
	if !slices.Contains(IPProtocols, v.IPProtocol) {
		return Invalid("ltm virtual %s: ip-protocol %q is not supported (supported: %v)", v.Name, v.IPProtocol, IPProtocols)
	}
	if v.Mask.IsValid() && v.Mask != allOnes(v.Destination.Addr()) {
		return Invalid("ltm virtual %s: mask %s is not supported: a virtual server here has one destination address (mask %s)", v.Name, v.Mask, allOnes(v.Destination.Addr()))
	}
	if v.Source.IsValid() && v.Source.Addr().Is4() != v.Destination.Addr().Is4() {
		return Invalid("ltm virtual %s: source %s and destination %s are of different address families", v.Name, v.Source, v.Destination.Addr())
	}
	for _, p := range v.Profiles {
		if !slices.Contains(Profiles, p) {
			return Invalid("ltm virtual %s: profile %s is not supported: this appliance forwards at layer 4 (profiles: %v)", v.Name, p, Profiles)
		}
	}
	var family netip.Addr
	if v.Pool != "" {
		p, i := s.FindPool(v.Pool)
		if i < 0 {
			return NotFound("pool", v.Pool)
		}
		if len(p.Members) > 0 {
			family = p.Members[0].Address.Addr()
		}
		if family.IsValid() && family.Is4() != v.Destination.Addr().Is4() {
			return Invalid("ltm virtual %s: pool %s members and destination %s are of different address families", v.Name, v.Pool, v.Destination.Addr())
		}
	}
	switch v.SNATType {
	case "", "none":
		if v.SNATPool != "" {
			return Invalid("ltm virtual %s: source-address-translation pool needs type snat", v.Name)
		}
	case "snat":
		if v.SNATPool == "" {
			return Invalid("ltm virtual %s: source-address-translation type snat needs a pool", v.Name)
		}
		sp, i := s.FindSNATPool(v.SNATPool)
		if i < 0 {
			return NotFound("snatpool", v.SNATPool)
		}
		for _, m := range sp.Members {
			if m.Is4() != v.Destination.Addr().Is4() {
				return Invalid("ltm virtual %s: snatpool %s member %s and destination %s are of different address families", v.Name, sp.Name, m, v.Destination.Addr())
			}
		}
	case "automap":
		return Invalid("ltm virtual %s: source-address-translation type automap is not supported yet; use type snat with a snatpool", v.Name)
	default:
		return Invalid("ltm virtual %s: source-address-translation type %q must be one of %v", v.Name, v.SNATType, SNATTypes)
	}
	return nil
}

func allOnes(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	var b [16]byte
	for i := range b {
		b[i] = 0xff
	}
	return netip.AddrFrom16(b)
}

// HostMask returns the all-ones mask of the address's family, BIG-IP's default virtual mask.
func HostMask(a netip.Addr) netip.Addr { return allOnes(a) }
