// Package config holds the appliance's configuration: the object model that tmsh edits,
// its validation, and its storage as TOML files.
//
// The configuration has two parts. Local holds what belongs to this device alone (its name,
// its peer-facing addresses, VLANs, non-floating self IPs, sys db variables) and is never
// overwritten by a config sync. Shared holds the traffic objects (partitions, pools, SNAT
// pools, virtual servers) that config sync carries from one device to the other.
package config

import (
	"net/netip"
	"strings"
)

// CommonPartition is the partition every device has and that cannot be deleted.
const CommonPartition = "Common"

// FloatingTrafficGroup is the traffic group whose addresses move with the Active device.
const FloatingTrafficGroup = "traffic-group-1"

// LocalOnlyTrafficGroup is the traffic group of addresses that stay on their device.
const LocalOnlyTrafficGroup = "traffic-group-local-only"

// Config is one generation of the whole configuration. It is a value: Clone before changing.
type Config struct {
	Local  Local
	Shared Shared
}

// Local is the device-local part, stored in the daemon's config file itself.
type Local struct {
	Device       Device            `toml:"device"`
	Peers        []Device          `toml:"peer,omitempty"`
	DeviceGroups []DeviceGroup     `toml:"device-group,omitempty"`
	VLANs        []VLAN            `toml:"vlan,omitempty"`
	Selfs        []Self            `toml:"self,omitempty"`
	DB           map[string]string `toml:"db,omitempty"`
}

// Shared is the part that config sync carries to the peer.
type Shared struct {
	Partitions []Partition `toml:"partition,omitempty"`
	Pools      []Pool      `toml:"pool,omitempty"`
	SNATPools  []SNATPool  `toml:"snatpool,omitempty"`
	Virtuals   []Virtual   `toml:"virtual,omitempty"`
	Users      []User      `toml:"user,omitempty"`
}

// Device is a cm device: this appliance or its peer, with the addresses the HA channels use.
type Device struct {
	Name              string       `toml:"name"`
	Description       string       `toml:"description,omitempty"`
	UnicastAddresses  []netip.Addr `toml:"unicast-address,omitempty"`
	MirrorIP          netip.Addr   `toml:"mirror-ip,omitempty"`
	MirrorSecondaryIP netip.Addr   `toml:"mirror-secondary-ip,omitempty"`
	ConfigsyncIP      netip.Addr   `toml:"configsync-ip,omitempty"`
}

// DeviceGroup is a cm device-group; a sync-failover group makes its devices an HA pair.
type DeviceGroup struct {
	Name            string   `toml:"name"`
	Type            string   `toml:"type"` // sync-failover or sync-only
	Devices         []string `toml:"devices,omitempty"`
	NetworkFailover bool     `toml:"network-failover"`
	AutoSync        bool     `toml:"auto-sync"`
	Description     string   `toml:"description,omitempty"`
}

// VLAN is a net vlan: a name over the Linux interfaces that carry it.
type VLAN struct {
	Name        string   `toml:"name"`
	Interfaces  []string `toml:"interfaces,omitempty"`
	Description string   `toml:"description,omitempty"`
}

// Self is a net self: an address of the appliance on a VLAN.
type Self struct {
	Name         string       `toml:"name"`
	Address      netip.Prefix `toml:"address"`
	VLAN         string       `toml:"vlan"`
	TrafficGroup string       `toml:"traffic-group,omitempty"`
	Description  string       `toml:"description,omitempty"`
}

// Partition is an auth partition: a folder of traffic objects, such as /RPC.
type Partition struct {
	Name        string `toml:"name"`
	Description string `toml:"description,omitempty"`
}

// Pool is an ltm pool.
type Pool struct {
	Name              string       `toml:"name"` // full path, /Partition/name
	Description       string       `toml:"description,omitempty"`
	Members           []PoolMember `toml:"member,omitempty"`
	LoadBalancingMode string       `toml:"load-balancing-mode,omitempty"`
	ServiceDownAction string       `toml:"service-down-action,omitempty"`
	SlowRampTime      int          `toml:"slow-ramp-time"`
	Monitor           string       `toml:"monitor,omitempty"`
}

// PoolMember is one node:port of a pool.
type PoolMember struct {
	Address     netip.AddrPort `toml:"address"`
	Description string         `toml:"description,omitempty"`
	Disabled    bool           `toml:"disabled,omitempty"`
}

// SNATPool is an ltm snatpool: the addresses a virtual translates client sources to.
type SNATPool struct {
	Name    string       `toml:"name"`
	Members []netip.Addr `toml:"members,omitempty"`
}

// Virtual is an ltm virtual server.
type Virtual struct {
	Name             string         `toml:"name"`
	Description      string         `toml:"description,omitempty"`
	Destination      netip.AddrPort `toml:"destination"`
	IPProtocol       string         `toml:"ip-protocol"`
	Mask             netip.Addr     `toml:"mask"`
	Source           netip.Prefix   `toml:"source"`
	Pool             string         `toml:"pool,omitempty"`
	Profiles         []string       `toml:"profiles,omitempty"`
	SNATType         string         `toml:"snat-type,omitempty"` // none, snat
	SNATPool         string         `toml:"snat-pool,omitempty"`
	Mirror           bool           `toml:"mirror"`
	Disabled         bool           `toml:"disabled,omitempty"`
	VSIndex          int            `toml:"vs-index"`
	TranslateAddress bool           `toml:"translate-address"`
	TranslatePort    bool           `toml:"translate-port"`
}

// DB variable names the daemon reads.
const (
	DBFailoverNetTimeout = "failover.nettimeout"
)

// DBDefaults are the sys db variables the appliance knows, with their defaults (BIG-IP's,
// except where a comment says).
var DBDefaults = map[string]string{
	DBFailoverNetTimeout: "0.5", // BIG-IP's is 3: see failover.DefaultTimeout
}

// New returns the configuration of a device that has never been configured.
func New(device string) Config {
	return Config{
		Local: Local{Device: Device{Name: device}},
		Shared: Shared{
			Partitions: []Partition{{Name: CommonPartition}},
		},
	}
}

// FullPath turns a name as typed (pool1, /RPC/pool1, RPC/pool1) into its full path, using
// partition for a name given without one.
func FullPath(name, partition string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	if partition == "" {
		partition = CommonPartition
	}
	return "/" + partition + "/" + name
}

// SplitPath returns the partition and the short name of a full path.
func SplitPath(path string) (partition, name string) {
	p := strings.TrimPrefix(path, "/")
	if i := strings.Index(p, "/"); i >= 0 {
		return p[:i], p[i+1:]
	}
	return CommonPartition, p
}

// DisplayPath is how tmsh prints a path: relative in /Common, in full elsewhere.
func DisplayPath(path string) string {
	if part, name := SplitPath(path); part == CommonPartition {
		return name
	}
	return path
}

// SelfDevice reports whether name is this device.
func (c *Config) SelfDevice(name string) bool { return c.Local.Device.Name == name }

// Peer returns the first other device in a sync-failover group with this one, if any.
func (c *Config) Peer() (Device, bool) {
	for _, g := range c.Local.DeviceGroups {
		if g.Type != "sync-failover" {
			continue
		}
		if !contains(g.Devices, c.Local.Device.Name) {
			continue
		}
		for _, d := range g.Devices {
			if d == c.Local.Device.Name {
				continue
			}
			if p, ok := c.FindPeer(d); ok {
				return p, true
			}
		}
	}
	return Device{}, false
}

// FailoverGroup returns the sync-failover device group this device belongs to.
func (c *Config) FailoverGroup() (DeviceGroup, bool) {
	for _, g := range c.Local.DeviceGroups {
		if g.Type == "sync-failover" && contains(g.Devices, c.Local.Device.Name) {
			return g, true
		}
	}
	return DeviceGroup{}, false
}

// FindPeer returns the peer device called name.
func (c *Config) FindPeer(name string) (Device, bool) {
	for _, d := range c.Local.Peers {
		if d.Name == name {
			return d, true
		}
	}
	return Device{}, false
}

// DBValue returns a sys db variable, or its default.
func (c *Config) DBValue(name string) string {
	if v, ok := c.Local.DB[name]; ok {
		return v
	}
	return DBDefaults[name]
}

// FindPool returns the pool at a full path.
func (s *Shared) FindPool(path string) (*Pool, int) {
	for i := range s.Pools {
		if s.Pools[i].Name == path {
			return &s.Pools[i], i
		}
	}
	return nil, -1
}

// FindSNATPool returns the snatpool at a full path.
func (s *Shared) FindSNATPool(path string) (*SNATPool, int) {
	for i := range s.SNATPools {
		if s.SNATPools[i].Name == path {
			return &s.SNATPools[i], i
		}
	}
	return nil, -1
}

// FindVirtual returns the virtual at a full path.
func (s *Shared) FindVirtual(path string) (*Virtual, int) {
	for i := range s.Virtuals {
		if s.Virtuals[i].Name == path {
			return &s.Virtuals[i], i
		}
	}
	return nil, -1
}

// FindPartition returns the partition called name.
func (s *Shared) FindPartition(name string) (*Partition, int) {
	for i := range s.Partitions {
		if s.Partitions[i].Name == name {
			return &s.Partitions[i], i
		}
	}
	return nil, -1
}

// FindVLAN returns the VLAN called name.
func (l *Local) FindVLAN(name string) (*VLAN, int) {
	for i := range l.VLANs {
		if l.VLANs[i].Name == name {
			return &l.VLANs[i], i
		}
	}
	return nil, -1
}

// FindSelf returns the self IP called name.
func (l *Local) FindSelf(name string) (*Self, int) {
	for i := range l.Selfs {
		if l.Selfs[i].Name == name {
			return &l.Selfs[i], i
		}
	}
	return nil, -1
}

// FindDeviceGroup returns the device group called name.
func (l *Local) FindDeviceGroup(name string) (*DeviceGroup, int) {
	for i := range l.DeviceGroups {
		if l.DeviceGroups[i].Name == name {
			return &l.DeviceGroups[i], i
		}
	}
	return nil, -1
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
