package tmsh

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

// kind is one configuration component (ltm virtual, net self, ...): how its objects are
// named, printed, created, changed and deleted. The table of kinds is the language's
// vocabulary; help and completion come from it.
type kind struct {
	module, component string
	help              string
	partitioned       bool     // names are /Partition/name
	props             []string // property names; filled from specs when a kind gives specs
	specs             []prop   // the properties with their help and values (see spec.go)
	names             func(c *config.Config) []string
	render            func(c *config.Config, name string) Object
	create            func(c *config.Config, name string, p *cursor) error // nil: cannot be created
	modify            func(c *config.Config, name string, p *cursor) error
	remove            func(c *config.Config, name string) error // nil: cannot be deleted
	// rename gives the object from the new name to and updates every reference to it
	// (mv); nil: cannot be renamed.
	rename func(c *config.Config, from, to string) error
}

func (k *kind) title() string { return k.module + " " + k.component }

// modules lists the modules and their help.
var modules = [][2]string{
	{"auth", "user accounts and partitions"},
	{"cm", "devices, device groups, failover and config sync"},
	{"ltm", "local traffic: virtual servers, pools, SNAT pools"},
	{"net", "VLANs and self IPs"},
	{"sys", "system: connections, failover, db variables, configuration files"},
	{"util", "utilities run on the device: ping"},
}

func findModule(name string) string {
	for _, m := range modules {
		if m[0] == name {
			return name
		}
	}
	return ""
}

var kinds []*kind

func init() {
	kinds = []*kind{authPartition(), authUser(), cmDevice(), cmDeviceGroup(), ltmPool(), ltmSNATPool(), ltmVirtual(), netSelf(), netVLAN(), sysDB()}
	for _, k := range kinds {
		if len(k.props) == 0 {
			k.props = propNames(k.specs)
		}
	}
	buildVerbs()
}

func findKind(module, component string) *kind {
	for _, k := range kinds {
		if k.module == module && k.component == component {
			return k
		}
	}
	return nil
}

// resolveRef resolves a reference typed in an object of partition: a full path as is, a
// short name in the object's partition first, then in /Common, as BIG-IP looks them up.
func resolveRef(name, partition string, exists func(string) bool) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	p := config.FullPath(name, partition)
	if exists(p) {
		return p
	}
	if c := config.FullPath(name, config.CommonPartition); exists(c) {
		return c
	}
	return p
}

// --- auth partition ---

func authPartition() *kind {
	return &kind{
		module: "auth", component: "partition", help: "administrative partitions (folders) such as /RPC",
		specs: []prop{descriptionProp},
		names: func(c *config.Config) []string {
			var out []string
			for _, p := range c.Shared.Partitions {
				out = append(out, p.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			p, _ := c.Shared.FindPartition(name)
			return Object{Kind: "auth partition", Name: p.Name, Props: []Prop{description(p.Description)}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Shared.Partitions = append(c.Shared.Partitions, config.Partition{Name: name})
			return modifyPartition(c, name, cur)
		},
		modify: modifyPartition,
		remove: func(c *config.Config, name string) error {
			if name == config.CommonPartition {
				return config.Invalid("auth partition Common cannot be deleted")
			}
			prefix := "/" + name + "/"
			for _, v := range c.Shared.Virtuals {
				if strings.HasPrefix(v.Name, prefix) {
					return config.InUse("partition", name, "Virtual Server", v.Name)
				}
			}
			for _, p := range c.Shared.Pools {
				if strings.HasPrefix(p.Name, prefix) {
					return config.InUse("partition", name, "Pool", p.Name)
				}
			}
			for _, p := range c.Shared.SNATPools {
				if strings.HasPrefix(p.Name, prefix) {
					return config.InUse("partition", name, "SNAT Pool", p.Name)
				}
			}
			_, i := c.Shared.FindPartition(name)
			c.Shared.Partitions = slices.Delete(c.Shared.Partitions, i, i+1)
			return nil
		},
	}
}

func modifyPartition(c *config.Config, name string, cur *cursor) error {
	p, _ := c.Shared.FindPartition(name)
	for !cur.done() {
		key, err := cur.key()
		if err != nil {
			return err
		}
		switch key {
		case "description":
			if p.Description, err = cur.text(key); err != nil {
				return err
			}
		default:
			return unknownProp("auth partition", key)
		}
	}
	return nil
}

// --- auth user ---

func authUser() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		u, _ := c.Shared.FindUser(name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "partition-access":
				if u.PartitionAccess, err = editList(cur, key, u.PartitionAccess, partitionAccessItem, func(a config.PartitionAccess) string { return a.Partition }); err != nil {
					return err
				}
			case "description":
				if u.Description, err = cur.text(key); err != nil {
					return err
				}
			default:
				return unknownProp("auth user", key)
			}
		}
		return nil
	}
	return &kind{
		module: "auth", component: "user", help: "user accounts (Unix logins whose shell is tmsh) and their roles: admin, operator, guest",
		specs: []prop{
			descriptionProp,
			{name: "partition-access", help: "the user's role: all-partitions { role admin|operator|guest|no-access }", list: true,
				hint: "all-partitions { role <role> }", sub: []prop{enumProp("role", "what the user may do", config.Roles...)}},
		},
		names: func(c *config.Config) []string {
			var out []string
			for _, u := range c.Shared.Users {
				out = append(out, u.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			u, _ := c.Shared.FindUser(name)
			access := Prop{Key: "partition-access", IsBlock: true}
			for _, a := range u.PartitionAccess {
				access.Block = append(access.Block, block(a.Partition, val("role", string(a.Role))))
			}
			return Object{Kind: "auth user", Name: u.Name, Props: []Prop{description(u.Description), access}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Shared.Users = append(c.Shared.Users, config.User{Name: name})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			c.Shared.Users = slices.DeleteFunc(c.Shared.Users, func(u config.User) bool { return u.Name == name })
			return nil
		},
	}
}

// partitionAccessItem reads BIG-IP's "all-partitions { role operator }".
func partitionAccessItem(it listItem) (config.PartitionAccess, error) {
	a := config.PartitionAccess{Partition: it.name}
	for i := 0; i < len(it.settings); i += 2 {
		if it.settings[i].IsBlock || it.settings[i].Word != "role" || i+1 >= len(it.settings) || it.settings[i+1].IsBlock {
			return a, syntaxf("partition-access %s: expected { role ROLE }", it.name)
		}
		role, err := parseOneOf("role", it.settings[i+1].Word, config.Roles)
		if err != nil {
			return a, err
		}
		a.Role = config.Role(role)
	}
	if a.Role == "" {
		return a, syntaxf("partition-access %s: a role is required, such as { role guest }", it.name)
	}
	return a, nil
}

// --- cm device ---

func cmDevice() *kind {
	find := func(c *config.Config, name string) *config.Device {
		if c.Local.Device.Name == name {
			return &c.Local.Device
		}
		for i := range c.Local.Peers {
			if c.Local.Peers[i].Name == name {
				return &c.Local.Peers[i]
			}
		}
		return nil
	}
	modify := func(c *config.Config, name string, cur *cursor) error {
		d := find(c, name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "unicast-address":
				if d.UnicastAddresses, err = editList(cur, key, d.UnicastAddresses, unicastItem, netip.Addr.String); err != nil {
					return err
				}
			case "mirror-ip", "mirror-secondary-ip", "configsync-ip":
				w, err := cur.word(key)
				if err != nil {
					return err
				}
				var a netip.Addr
				if w != "any6" && w != "none" {
					if a, err = parseAddr(key, w); err != nil {
						return err
					}
				}
				switch key {
				case "mirror-ip":
					d.MirrorIP = a
				case "mirror-secondary-ip":
					d.MirrorSecondaryIP = a
				default:
					d.ConfigsyncIP = a
				}
			case "description":
				if d.Description, err = cur.text(key); err != nil {
					return err
				}
			default:
				return unknownProp("cm device", key)
			}
		}
		return nil
	}
	return &kind{
		module: "cm", component: "device", help: "the devices of the HA pair and their peer-facing addresses",
		specs: []prop{
			freeProp("configsync-ip", "the address the peer pushes config syncs to; any6 for none", "<ip-address>"),
			descriptionProp,
			freeProp("mirror-ip", "the address connection mirroring uses (TCP 1028); any6 for none", "<ip-address>"),
			freeProp("mirror-secondary-ip", "the mirroring address used when mirror-ip is unreachable", "<ip-address>"),
			listProp("unicast-address", "the addresses heartbeats go to (UDP 1026)", "<ip-address>"),
		},
		names: func(c *config.Config) []string {
			out := []string{c.Local.Device.Name}
			for _, p := range c.Local.Peers {
				out = append(out, p.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			d := find(c, name)
			addr := func(a netip.Addr) string {
				if !a.IsValid() {
					return "any6"
				}
				return a.String()
			}
			uni := Prop{Key: "unicast-address", IsBlock: true, Default: len(d.UnicastAddresses) == 0}
			for _, a := range d.UnicastAddresses {
				uni.Block = append(uni.Block, block("", val("effective-ip", a.String()), val("effective-port", "1026"), val("ip", a.String())))
			}
			if len(d.UnicastAddresses) == 0 {
				uni.Value, uni.IsBlock = "none", false
			}
			return Object{Kind: "cm device", Name: d.Name, Props: []Prop{
				def("configsync-ip", addr(d.ConfigsyncIP), "any6"),
				description(d.Description),
				def("mirror-ip", addr(d.MirrorIP), "any6"),
				def("mirror-secondary-ip", addr(d.MirrorSecondaryIP), "any6"),
				uni,
			}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Local.Peers = append(c.Local.Peers, config.Device{Name: name})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			if c.Local.Device.Name == name {
				return config.Invalid("cm device %s is this device and cannot be deleted", name)
			}
			for _, g := range c.Local.DeviceGroups {
				if slices.Contains(g.Devices, name) {
					return config.InUse("device", "/Common/"+name, "Device Group", "/Common/"+g.Name)
				}
			}
			c.Local.Peers = slices.DeleteFunc(c.Local.Peers, func(d config.Device) bool { return d.Name == name })
			return nil
		},
	}
}

// unicastItem accepts "192.168.77.2" and BIG-IP's "{ ip 192.168.77.2 effective-port 1026 }".
func unicastItem(it listItem) (netip.Addr, error) {
	s := it.name
	for i := 0; i+1 < len(it.settings); i += 2 {
		if it.settings[i].Word == "ip" {
			s = it.settings[i+1].Word
		}
	}
	return parseAddr("unicast-address", s)
}

// --- cm device-group ---

func cmDeviceGroup() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		g, _ := c.Local.FindDeviceGroup(name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "type":
				if g.Type, err = cur.oneOf(key, config.DeviceGroupTypes); err != nil {
					return err
				}
			case "devices":
				if g.Devices, err = editList(cur, key, g.Devices, itemShortName, identity); err != nil {
					return err
				}
			case "network-failover":
				if g.NetworkFailover, err = cur.enabled(key); err != nil {
					return err
				}
			case "auto-sync":
				if g.AutoSync, err = cur.enabled(key); err != nil {
					return err
				}
			case "description":
				if g.Description, err = cur.text(key); err != nil {
					return err
				}
			default:
				return unknownProp("cm device-group", key)
			}
		}
		return nil
	}
	return &kind{
		module: "cm", component: "device-group", help: "device groups: a sync-failover group makes an HA pair",
		specs: []prop{
			enabledProp("auto-sync", "push every change to the group's other devices"),
			descriptionProp,
			listProp("devices", "the devices of the group", "<device>"),
			enabledProp("network-failover", "decide failover from heartbeats over the network"),
			enumProp("type", "sync-failover makes an HA pair; sync-only only shares configuration", config.DeviceGroupTypes...),
		},
		names: func(c *config.Config) []string {
			var out []string
			for _, g := range c.Local.DeviceGroups {
				out = append(out, g.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			g, _ := c.Local.FindDeviceGroup(name)
			devs := Prop{Key: "devices", IsBlock: true}
			for _, d := range g.Devices {
				devs.Block = append(devs.Block, block(d))
			}
			return Object{Kind: "cm device-group", Name: g.Name, Props: []Prop{
				def("auto-sync", enabledWord(g.AutoSync), "disabled"),
				description(g.Description),
				devs,
				def("network-failover", enabledWord(g.NetworkFailover), "enabled"),
				val("type", g.Type),
			}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Local.DeviceGroups = append(c.Local.DeviceGroups, config.DeviceGroup{Name: name, Type: "sync-only", NetworkFailover: true})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			c.Local.DeviceGroups = slices.DeleteFunc(c.Local.DeviceGroups, func(g config.DeviceGroup) bool { return g.Name == name })
			return nil
		},
	}
}

// --- net vlan ---

func netVLAN() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		v, _ := c.Local.FindVLAN(name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "interfaces":
				if v.Interfaces, err = editList(cur, key, v.Interfaces, itemName, identity); err != nil {
					return err
				}
			case "description":
				if v.Description, err = cur.text(key); err != nil {
					return err
				}
			default:
				return unknownProp("net vlan", key)
			}
		}
		return nil
	}
	return &kind{
		module: "net", component: "vlan", help: "VLANs: names over the Linux interfaces that carry them",
		specs: []prop{descriptionProp, listProp("interfaces", "the Linux interfaces that carry the VLAN", "<interface>")},
		names: func(c *config.Config) []string {
			var out []string
			for _, v := range c.Local.VLANs {
				out = append(out, v.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			v, _ := c.Local.FindVLAN(name)
			ifs := Prop{Key: "interfaces", IsBlock: true, Default: len(v.Interfaces) == 0}
			for _, i := range v.Interfaces {
				ifs.Block = append(ifs.Block, block(i))
			}
			return Object{Kind: "net vlan", Name: v.Name, Props: []Prop{description(v.Description), ifs}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Local.VLANs = append(c.Local.VLANs, config.VLAN{Name: name})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			for _, s := range c.Local.Selfs {
				if s.VLAN == name {
					return config.InUse("VLAN", "/Common/"+name, "Self IP", "/Common/"+s.Name)
				}
			}
			c.Local.VLANs = slices.DeleteFunc(c.Local.VLANs, func(v config.VLAN) bool { return v.Name == name })
			return nil
		},
	}
}

// --- net self ---

func netSelf() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		s, _ := c.Local.FindSelf(name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			w, err := cur.word(key)
			if err != nil {
				return err
			}
			switch key {
			case "address":
				p, err := netip.ParsePrefix(w)
				if err != nil {
					return syntaxf("address: %q is not an address with its netmask (such as 10.0.0.2/24)", w)
				}
				s.Address = p
			case "vlan":
				s.VLAN = strings.TrimPrefix(w, "/Common/")
			case "traffic-group":
				s.TrafficGroup = strings.TrimPrefix(w, "/Common/")
				if s.TrafficGroup == config.FloatingTrafficGroup {
					return config.Invalid("net self %s: floating self IPs (traffic-group-1) are not supported yet; virtual and SNAT addresses float with traffic-group-1", name)
				}
			case "description":
				s.Description = noneEmpty(w)
			case "allow-service":
				// Accepted for compatibility: the appliance does not filter by service.
			default:
				return unknownProp("net self", key)
			}
		}
		return nil
	}
	return &kind{
		module: "net", component: "self", help: "self IPs: the appliance's own addresses on its VLANs",
		specs: []prop{
			freeProp("address", "the address with its netmask", "<ip-address/prefix>"),
			descriptionProp,
			enumProp("traffic-group", "traffic-group-local-only stays on this device", config.TrafficGroups...),
			{name: "vlan", help: "the VLAN the address is on", ref: "net vlan"},
			freeProp("allow-service", "accepted for compatibility: the appliance does not filter by service", "<service>"),
		},
		names: func(c *config.Config) []string {
			var out []string
			for _, s := range c.Local.Selfs {
				out = append(out, s.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			s, _ := c.Local.FindSelf(name)
			tg := s.TrafficGroup
			if tg == "" {
				tg = config.LocalOnlyTrafficGroup
			}
			return Object{Kind: "net self", Name: s.Name, Props: []Prop{
				val("address", s.Address.String()),
				description(s.Description),
				val("traffic-group", tg),
				val("vlan", s.VLAN),
			}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Local.Selfs = append(c.Local.Selfs, config.Self{Name: name, TrafficGroup: config.LocalOnlyTrafficGroup})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			c.Local.Selfs = slices.DeleteFunc(c.Local.Selfs, func(s config.Self) bool { return s.Name == name })
			return nil
		},
	}
}

// --- sys db ---

func sysDB() *kind {
	return &kind{
		module: "sys", component: "db", help: "system database variables such as failover.nettimeout",
		specs: []prop{freeProp("value", "the variable's value", "<value>")},
		names: func(c *config.Config) []string {
			var out []string
			for name := range config.DBDefaults {
				out = append(out, name)
			}
			slices.Sort(out)
			return out
		},
		render: func(c *config.Config, name string) Object {
			return Object{Kind: "sys db", Name: name, Props: []Prop{{Key: "value", Value: strconv.Quote(c.DBValue(name)), Raw: true}}}
		},
		modify: func(c *config.Config, name string, cur *cursor) error {
			for !cur.done() {
				key, err := cur.key()
				if err != nil {
					return err
				}
				if key != "value" {
					return unknownProp("sys db", key)
				}
				w, err := cur.word(key)
				if err != nil {
					return err
				}
				if err := config.ValidateDB(name, w); err != nil {
					return err
				}
				if c.Local.DB == nil {
					c.Local.DB = map[string]string{}
				}
				c.Local.DB[name] = w
			}
			return nil
		},
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// description prints an empty description as BIG-IP does: none.
func description(d string) Prop {
	if d == "" {
		return def("description", "none", "none")
	}
	return val("description", d)
}

// noneEmpty reads BIG-IP's "none" as an empty value.
func noneEmpty(s string) string {
	if s == "none" {
		return ""
	}
	return s
}
