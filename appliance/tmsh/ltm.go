package tmsh

import (
	"net/netip"
	"slices"
	"strconv"

	"github.com/openappliance/appliance/appliance/config"
)

// refPath prints a reference to another object as BIG-IP does: always the full path.
func refPath(p string) string { return p }

func ltmPool() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		p, _ := c.Shared.FindPool(name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "members":
				member := func(it listItem) (config.PoolMember, error) { return poolMember(name, it) }
				if p.Members, err = editList(cur, key, p.Members, member, func(m config.PoolMember) string { return m.Address.String() }); err != nil {
					return err
				}
			// The defaults are stored empty, so that a default typed out and one left out
			// make the same configuration (what list prints pastes back identically).
			case "load-balancing-mode":
				if p.LoadBalancingMode, err = cur.oneOf(key, config.LoadBalancingModes); err != nil {
					return err
				}
				if p.LoadBalancingMode == "round-robin" {
					p.LoadBalancingMode = ""
				}
			case "service-down-action":
				if p.ServiceDownAction, err = cur.oneOf(key, config.ServiceDownActions); err != nil {
					return err
				}
				if p.ServiceDownAction == "none" {
					p.ServiceDownAction = ""
				}
			case "slow-ramp-time":
				w, err := cur.word(key)
				if err != nil {
					return err
				}
				n, err := strconv.Atoi(w)
				if err != nil || n < 0 {
					return syntaxf("slow-ramp-time: %q must be a number of seconds", w)
				}
				p.SlowRampTime = n
			case "monitor":
				if p.Monitor, err = cur.word(key); err != nil {
					return err
				}
				if p.Monitor == "none" {
					p.Monitor = ""
				}
			case "description":
				w, err := cur.word(key)
				if err != nil {
					return err
				}
				p.Description = noneEmpty(w)
			default:
				return unknownProp("ltm pool", key)
			}
		}
		return nil
	}
	return &kind{
		module: "ltm", component: "pool", help: "pools: the servers a virtual server balances over", partitioned: true,
		specs: []prop{
			descriptionProp,
			enumProp("load-balancing-mode", "how connections are spread over the members", config.LoadBalancingModes...),
			listProp("members", "the servers, as address:port", "<ip-address:port>"),
			enumProp("monitor", "health monitor: none (members are not checked)", "none"),
			enumProp("service-down-action", "what happens to connections of a member that goes down", config.ServiceDownActions...),
			freeProp("slow-ramp-time", "seconds a member that comes up takes to reach its full share", "<seconds>"),
		},
		names: func(c *config.Config) []string {
			var out []string
			for _, p := range c.Shared.Pools {
				out = append(out, p.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			p, _ := c.Shared.FindPool(name)
			part, _ := config.SplitPath(p.Name)
			members := Prop{Key: "members", IsBlock: true, Default: len(p.Members) == 0}
			for _, m := range p.Members {
				mn := config.DisplayPath(config.FullPath(formatAddrPort(m.Address), part))
				props := []Prop{val("address", m.Address.Addr().String())}
				if m.Description != "" {
					props = append(props, val("description", m.Description))
				}
				if m.Disabled {
					props = append(props, val("session", "user-disabled"))
				}
				members.Block = append(members.Block, block(mn, props...))
			}
			if len(p.Members) == 0 {
				members.Value, members.IsBlock = "none", false
			}
			lb := p.LoadBalancingMode
			if lb == "" {
				lb = "round-robin"
			}
			sda := p.ServiceDownAction
			if sda == "" {
				sda = "none"
			}
			mon := p.Monitor
			if mon == "" {
				mon = "none"
			}
			return Object{Kind: "ltm pool", Name: config.DisplayPath(p.Name), Props: []Prop{
				description(p.Description),
				def("load-balancing-mode", lb, "round-robin"),
				members,
				def("monitor", mon, "none"),
				partitionProp(p.Name),
				def("service-down-action", sda, "none"),
				def("slow-ramp-time", strconv.Itoa(p.SlowRampTime), "10"),
			}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Shared.Pools = append(c.Shared.Pools, config.Pool{Name: name, SlowRampTime: 10})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			for _, v := range c.Shared.Virtuals {
				if v.Pool == name {
					return config.InUse("Pool", name, "Virtual Server", v.Name)
				}
			}
			_, i := c.Shared.FindPool(name)
			c.Shared.Pools = slices.Delete(c.Shared.Pools, i, i+1)
			return nil
		},
		rename: func(c *config.Config, from, to string) error {
			p, _ := c.Shared.FindPool(from)
			p.Name = to
			for i := range c.Shared.Virtuals {
				if c.Shared.Virtuals[i].Pool == from {
					c.Shared.Virtuals[i].Pool = to
				}
			}
			return nil
		},
	}
}

// poolMember parses a pool member: 10.1.0.100:3306, optionally with its own settings as
// list prints them ({ address 10.1.0.100 }).
func poolMember(pool string, it listItem) (config.PoolMember, error) {
	ap, _, err := parseAddrPort("members", it.name)
	if err != nil {
		return config.PoolMember{}, err
	}
	m := config.PoolMember{Address: ap}
	for i := 0; i+1 < len(it.settings); i += 2 {
		switch it.settings[i].Word {
		case "address":
			a, err := parseAddr("members address", it.settings[i+1].Word)
			if err != nil {
				return m, err
			}
			if a != ap.Addr() {
				return m, config.Invalid("ltm pool %s: member %s has address %s: member names here are address:port", pool, it.name, a)
			}
		case "description":
			m.Description = noneEmpty(it.settings[i+1].Word)
		case "session", "state":
			m.Disabled = it.settings[i+1].Word == "user-disabled" || it.settings[i+1].Word == "user-down"
		default:
			return m, unknownProp("pool member", it.settings[i].Word)
		}
	}
	return m, nil
}

// partitionProp is the "partition RPC" line BIG-IP prints for objects outside /Common.
func partitionProp(path string) Prop {
	part, _ := config.SplitPath(path)
	return def("partition", part, config.CommonPartition)
}

func ltmSNATPool() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		p, _ := c.Shared.FindSNATPool(name)
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "members":
				if p.Members, err = editList(cur, key, p.Members, snatMember, netip.Addr.String); err != nil {
					return err
				}
			default:
				return unknownProp("ltm snatpool", key)
			}
		}
		return nil
	}
	return &kind{
		module: "ltm", component: "snatpool", help: "SNAT pools: addresses client sources are translated to", partitioned: true,
		specs: []prop{listProp("members", "the addresses client sources are translated to", "<ip-address>")},
		names: func(c *config.Config) []string {
			var out []string
			for _, p := range c.Shared.SNATPools {
				out = append(out, p.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			p, _ := c.Shared.FindSNATPool(name)
			part, _ := config.SplitPath(p.Name)
			members := Prop{Key: "members", IsBlock: true}
			for _, m := range p.Members {
				members.Block = append(members.Block, Prop{Key: config.DisplayPath(config.FullPath(m.String(), part))})
			}
			return Object{Kind: "ltm snatpool", Name: config.DisplayPath(p.Name), Props: []Prop{members, partitionProp(p.Name)}}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Shared.SNATPools = append(c.Shared.SNATPools, config.SNATPool{Name: name})
			return modify(c, name, cur)
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			for _, v := range c.Shared.Virtuals {
				if v.SNATPool == name {
					return config.InUse("SNAT Pool", name, "Virtual Server", v.Name)
				}
			}
			_, i := c.Shared.FindSNATPool(name)
			c.Shared.SNATPools = slices.Delete(c.Shared.SNATPools, i, i+1)
			return nil
		},
		rename: func(c *config.Config, from, to string) error {
			p, _ := c.Shared.FindSNATPool(from)
			p.Name = to
			for i := range c.Shared.Virtuals {
				if c.Shared.Virtuals[i].SNATPool == from {
					c.Shared.Virtuals[i].SNATPool = to
				}
			}
			return nil
		},
	}
}

// snatMember parses a SNAT pool member: 10.1.0.10, or /RPC/10.1.0.10 as list prints it.
func snatMember(it listItem) (netip.Addr, error) {
	_, s := config.SplitPath(it.name)
	return parseAddr("members", s)
}

func ltmVirtual() *kind {
	modify := func(c *config.Config, name string, cur *cursor) error {
		v, _ := c.Shared.FindVirtual(name)
		part, _ := config.SplitPath(name)
		poolExists := func(p string) bool { _, i := c.Shared.FindPool(p); return i >= 0 }
		snatExists := func(p string) bool { _, i := c.Shared.FindSNATPool(p); return i >= 0 }
		maskSet := false
		for !cur.done() {
			key, err := cur.key()
			if err != nil {
				return err
			}
			switch key {
			case "enabled", "disabled":
				v.Disabled = key == "disabled"
				continue
			case "profiles":
				if v.Profiles, err = editList(cur, key, v.Profiles, itemShortName, identity); err != nil {
					return err
				}
				continue
			case "source-address-translation":
				nodes, err := cur.block(key)
				if err != nil {
					return err
				}
				sub := &cursor{nodes: nodes}
				for !sub.done() {
					k, err := sub.key()
					if err != nil {
						return err
					}
					w, err := sub.word(key + " " + k)
					if err != nil {
						return err
					}
					switch k {
					case "type":
						v.SNATType = w
						if w == "none" {
							v.SNATPool = ""
						}
					case "pool":
						if w == "none" {
							v.SNATPool = ""
						} else {
							v.SNATPool = resolveRef(w, part, snatExists)
						}
					default:
						return unknownProp("source-address-translation", k)
					}
				}
				continue
			}
			w, err := cur.word(key)
			if err != nil {
				return err
			}
			switch key {
			case "destination":
				ap, _, err := parseAddrPort(key, w)
				if err != nil {
					return err
				}
				v.Destination = ap
				if !maskSet {
					v.Mask = config.HostMask(ap.Addr())
				}
				if !v.Source.IsValid() || v.Source.Bits() == 0 {
					v.Source = netip.PrefixFrom(anyAddr(ap.Addr()), 0)
				}
			case "ip-protocol":
				if v.IPProtocol, err = parseOneOf(key, w, config.IPProtocols); err != nil {
					return err
				}
			case "mask":
				if v.Mask, err = parseAddr(key, w); err != nil {
					return err
				}
				maskSet = true
			case "source":
				p, err := netip.ParsePrefix(w)
				if err != nil {
					return syntaxf("source: %q is not an address with its netmask (such as 0.0.0.0/0)", w)
				}
				v.Source = p
			case "pool":
				if w == "none" {
					v.Pool = ""
				} else {
					v.Pool = resolveRef(w, part, poolExists)
				}
			case "mirror":
				if v.Mirror, err = parseEnabled(key, w); err != nil {
					return err
				}
			case "translate-address", "translate-port":
				b, err := parseEnabled(key, w)
				if err != nil {
					return err
				}
				if !b {
					return config.Invalid("ltm virtual %s: %s disabled is not supported: the appliance always translates to the pool member", name, key)
				}
			case "description":
				v.Description = noneEmpty(w)
			case "vs-index":
				n, err := strconv.Atoi(w)
				if err != nil || n < 1 {
					return syntaxf("vs-index: %q must be a positive number", w)
				}
				v.VSIndex = n
			default:
				return unknownProp("ltm virtual", key)
			}
		}
		return nil
	}
	return &kind{
		module: "ltm", component: "virtual", help: "virtual servers: addresses that clients connect to", partitioned: true,
		specs: []prop{
			descriptionProp,
			freeProp("destination", "the address and port clients connect to", "<ip-address:port>"),
			flagProp("disabled", "stop accepting new connections"),
			flagProp("enabled", "accept connections"),
			enumProp("ip-protocol", "the protocol of the virtual server", config.IPProtocols...),
			freeProp("mask", "the netmask of the destination", "<netmask>"),
			enabledProp("mirror", "mirror connections to the standby so they survive a failover"),
			refProp("pool", "the pool connections are balanced over", "ltm pool"),
			{name: "profiles", help: "the profiles: fastL4 (layer 4 forwarding)", list: true, values: config.Profiles},
			freeProp("source", "the client addresses accepted, with their netmask", "<ip-address/prefix>"),
			{name: "source-address-translation", help: "SNAT: translate client sources to a SNAT pool", sub: []prop{
				enumProp("type", "snat translates to a SNAT pool; none keeps the client's address", "none", "snat"),
				refProp("pool", "the SNAT pool", "ltm snatpool"),
			}},
			enabledProp("translate-address", "translate the destination to the member's address (always enabled)"),
			enabledProp("translate-port", "translate the destination port to the member's port (always enabled)"),
			freeProp("vs-index", "the virtual server's index", "<number>"),
		},
		names: func(c *config.Config) []string {
			var out []string
			for _, v := range c.Shared.Virtuals {
				out = append(out, v.Name)
			}
			return out
		},
		render: func(c *config.Config, name string) Object {
			v, _ := c.Shared.FindVirtual(name)
			part, _ := config.SplitPath(v.Name)
			profiles := Prop{Key: "profiles", IsBlock: true}
			for _, p := range v.Profiles {
				profiles.Block = append(profiles.Block, block(p))
			}
			snat := block("source-address-translation", val("type", "none"))
			snat.Default = true
			if v.SNATType == "snat" {
				snat = block("source-address-translation", val("pool", refPath(v.SNATPool)), val("type", "snat"))
			}
			pool := v.Pool
			if pool == "" {
				pool = "none"
			}
			props := []Prop{
				description(v.Description),
				val("destination", config.DisplayPath(config.FullPath(formatAddrPort(v.Destination), part))),
				val("ip-protocol", v.IPProtocol),
				val("mask", v.Mask.String()),
				def("mirror", enabledWord(v.Mirror), "disabled"),
				partitionProp(v.Name),
				def("pool", pool, "none"),
				profiles,
				val("source", v.Source.String()),
				snat,
				def("translate-address", "enabled", "enabled"),
				def("translate-port", "enabled", "enabled"),
				val("vs-index", strconv.Itoa(v.VSIndex)),
			}
			if v.Disabled {
				props = append(props, Prop{Key: "disabled"})
			}
			return Object{Kind: "ltm virtual", Name: config.DisplayPath(v.Name), Props: props}
		},
		create: func(c *config.Config, name string, cur *cursor) error {
			c.Shared.Virtuals = append(c.Shared.Virtuals, config.Virtual{
				Name: name, IPProtocol: "tcp", SNATType: "none",
				TranslateAddress: true, TranslatePort: true, VSIndex: c.Shared.NextVSIndex(),
			})
			if err := modify(c, name, cur); err != nil {
				return err
			}
			v, _ := c.Shared.FindVirtual(name)
			if !v.Destination.IsValid() {
				return config.Invalid("ltm virtual %s: destination is required", name)
			}
			if len(v.Profiles) == 0 {
				v.Profiles = []string{"fastL4"}
			}
			return nil
		},
		modify: modify,
		remove: func(c *config.Config, name string) error {
			_, i := c.Shared.FindVirtual(name)
			c.Shared.Virtuals = slices.Delete(c.Shared.Virtuals, i, i+1)
			return nil
		},
		// Nothing in the configuration refers to a virtual server by name.
		rename: func(c *config.Config, from, to string) error {
			v, _ := c.Shared.FindVirtual(from)
			v.Name = to
			return nil
		},
	}
}

func anyAddr(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}
