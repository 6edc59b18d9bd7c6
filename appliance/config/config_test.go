package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func galera() Config {
	c := New("lb1")
	c.Local.Device.UnicastAddresses = []netip.Addr{netip.MustParseAddr("192.168.77.2")}
	c.Local.Device.MirrorIP = netip.MustParseAddr("192.168.77.2")
	c.Local.Peers = []Device{{Name: "lb2", UnicastAddresses: []netip.Addr{netip.MustParseAddr("192.168.77.3")}}}
	c.Local.DeviceGroups = []DeviceGroup{{Name: "dg1", Type: "sync-failover", Devices: []string{"lb1", "lb2"}, NetworkFailover: true}}
	c.Local.VLANs = []VLAN{{Name: "external", Interfaces: []string{"ext"}}, {Name: "internal", Interfaces: []string{"int"}}}
	c.Local.Selfs = []Self{
		{Name: "self_ext", Address: netip.MustParsePrefix("10.0.0.2/24"), VLAN: "external"},
		{Name: "self_int", Address: netip.MustParsePrefix("10.1.0.2/24"), VLAN: "internal"},
	}
	c.Local.DB = map[string]string{DBFailoverNetTimeout: "0.5"}
	c.Shared.Partitions = append(c.Shared.Partitions, Partition{Name: "RPC"})
	c.Shared.Pools = []Pool{{Name: "/RPC/RPC_POOL_GALERA", Members: []PoolMember{{Address: netip.MustParseAddrPort("10.1.0.100:3306")}}}}
	c.Shared.SNATPools = []SNATPool{{Name: "/RPC/RPC_SNATPOOL", Members: []netip.Addr{netip.MustParseAddr("10.1.0.10")}}}
	c.Shared.Virtuals = []Virtual{{
		Name: "/RPC/RPC_VS_GALERA", Destination: netip.MustParseAddrPort("10.0.0.10:3306"), IPProtocol: "tcp",
		Mask: netip.MustParseAddr("255.255.255.255"), Source: netip.MustParsePrefix("0.0.0.0/0"),
		Pool: "/RPC/RPC_POOL_GALERA", Profiles: []string{"fastL4"}, SNATType: "snat", SNATPool: "/RPC/RPC_SNATPOOL",
		Mirror: true, VSIndex: 1, TranslateAddress: true, TranslatePort: true,
	}}
	c.Shared.Users = []User{{Name: "alice", Description: "on call", PartitionAccess: []PartitionAccess{{Partition: AllPartitions, Role: RoleOperator}}}}
	return c
}

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := Store{Path: filepath.Join(dir, "lb1.toml")}
	want := galera()
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("lb1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{}), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(s.SharedPath()); err != nil {
		t.Errorf("shared file: %v", err)
	}
	if Digest(got.Shared) != Digest(want.Shared) {
		t.Error("digest changed across a round trip")
	}
}

func TestLoadMissingFileGivesDefaults(t *testing.T) {
	s := Store{Path: filepath.Join(t.TempDir(), "none.toml")}
	c, err := s.Load("lbx")
	if err != nil {
		t.Fatal(err)
	}
	if c.Local.Device.Name != "lbx" || len(c.Shared.Partitions) != 1 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoadRejectsUnknownKeys(t *testing.T) {
	s := Store{Path: filepath.Join(t.TempDir(), "x.toml")}
	if err := os.WriteFile(s.Path, []byte("[device]\nname = \"lb1\"\nbogus = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("lb1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Load = %v, want ErrInvalid", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // error text, empty for valid
		kind   error
	}{
		{"valid", func(*Config) {}, "", nil},
		{"missing pool", func(c *Config) { c.Shared.Virtuals[0].Pool = "/RPC/nope" },
			"01020036:3: The requested pool (/RPC/nope) was not found.", ErrNotFound},
		{"missing snatpool", func(c *Config) { c.Shared.Virtuals[0].SNATPool = "/RPC/nope" },
			"01020036:3: The requested snatpool (/RPC/nope) was not found.", ErrNotFound},
		{"missing partition", func(c *Config) { c.Shared.Pools[0].Name = "/Nope/p" },
			"01020036:3: The requested folder (/Nope) was not found.", ErrNotFound},
		{"duplicate pool", func(c *Config) { c.Shared.Pools = append(c.Shared.Pools, c.Shared.Pools[0]) },
			"01020066:3: The requested pool (/RPC/RPC_POOL_GALERA) already exists in partition RPC.", ErrExists},
		{"network virtual", func(c *Config) { c.Shared.Virtuals[0].Mask = netip.MustParseAddr("255.255.255.0") },
			"01070734:3: Configuration error: ltm virtual /RPC/RPC_VS_GALERA: mask 255.255.255.0 is not supported: a virtual server here has one destination address (mask 255.255.255.255)", ErrInvalid},
		{"proxy profile", func(c *Config) { c.Shared.Virtuals[0].Profiles = []string{"http"} },
			"01070734:3: Configuration error: ltm virtual /RPC/RPC_VS_GALERA: profile http is not supported: this appliance forwards at layer 4 (profiles: [fastL4])", ErrInvalid},
		{"self on missing vlan", func(c *Config) { c.Local.Selfs[0].VLAN = "nope" },
			"01020036:3: The requested vlan (/Common/nope) was not found.", ErrNotFound},
		{"group with unknown device", func(c *Config) { c.Local.DeviceGroups[0].Devices = []string{"lb1", "lb9"} },
			"01020036:3: The requested device (/Common/lb9) was not found.", ErrNotFound},
		{"bad nettimeout", func(c *Config) { c.Local.DB[DBFailoverNetTimeout] = "soon" },
			`01070734:3: Configuration error: sys db failover.nettimeout: value "soon" must be a number of seconds between 0.01 and 3600`, ErrInvalid},
		{"virtual on a self IP", func(c *Config) { c.Shared.Virtuals[0].Destination = netip.MustParseAddrPort("10.0.0.2:3306") },
			"01070734:3: Configuration error: ltm virtual /RPC/RPC_VS_GALERA: destination address 10.0.0.2 is self IP self_ext: a virtual address floats between the devices and must be an address of its own", ErrInvalid},
		{"snat on a self IP", func(c *Config) { c.Shared.SNATPools[0].Members[0] = netip.MustParseAddr("10.1.0.2") },
			"01070734:3: Configuration error: ltm snatpool /RPC/RPC_SNATPOOL: member 10.1.0.2 is self IP self_int: SNAT addresses float between the devices and must be addresses of their own", ErrInvalid},
		{"duplicate destination", func(c *Config) {
			v := c.Shared.Virtuals[0]
			v.Name, v.VSIndex = "/RPC/other", 2
			c.Shared.Virtuals = append(c.Shared.Virtuals, v)
		}, "01070734:3: Configuration error: ltm virtual /RPC/other: destination 10.0.0.10:3306 (tcp) is already used by virtual /RPC/RPC_VS_GALERA", ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := galera()
			tt.change(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Validate = %v\nwant %s", err, tt.want)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.kind)
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	a := galera()
	b := a.Clone()
	b.Shared.Pools[0].Members[0].Address = netip.MustParseAddrPort("10.9.9.9:1")
	b.Local.DB["x"] = "y"
	b.Local.DeviceGroups[0].Devices[0] = "zz"
	if a.Shared.Pools[0].Members[0].Address.Port() != 3306 || a.Local.DB["x"] != "" || a.Local.DeviceGroups[0].Devices[0] != "lb1" {
		t.Error("Clone shares memory with the original")
	}
}

func TestFloatingAddresses(t *testing.T) {
	c := galera()
	got := c.FloatingAddresses()
	want := []FloatingAddress{
		{Addr: netip.MustParseAddr("10.0.0.10"), VLAN: "external", Interface: "ext", Owner: "virtual address of /RPC/RPC_VS_GALERA"},
		{Addr: netip.MustParseAddr("10.1.0.10"), VLAN: "internal", Interface: "int", Owner: "snatpool /RPC/RPC_SNATPOOL"},
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("FloatingAddresses (-want +got):\n%s", diff)
	}
	if d := c.NetTimeout(); d.Milliseconds() != 500 {
		t.Errorf("NetTimeout = %v", d)
	}
}

func FuzzDecodeShared(f *testing.F) {
	data, _ := EncodeShared(galera().Shared)
	f.Add(data)
	f.Add([]byte("[[virtual]]\nname = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if l, err := DecodeLocal(data); err == nil {
			c := New("lb1")
			c.Local = l
			_ = c.Validate()
		}
		s, err := DecodeShared(data)
		if err != nil {
			return
		}
		c := New("lb1")
		c.Shared = s
		_ = c.Validate()
		_ = c.FloatingAddresses()
	})
}

func TestValidateUsers(t *testing.T) {
	all := func(r Role) []PartitionAccess { return []PartitionAccess{{Partition: AllPartitions, Role: r}} }
	tests := []struct {
		name  string
		users []User
		want  error // nil: valid
	}{
		{"operator", []User{{Name: "alice", PartitionAccess: all(RoleOperator)}}, nil},
		{"every role", []User{{Name: "a", PartitionAccess: all(RoleAdmin)}, {Name: "o", PartitionAccess: all(RoleOperator)}, {Name: "g.x_y-z", PartitionAccess: all(RoleGuest)}, {Name: "n", PartitionAccess: all(RoleNoAccess)}}, nil},
		{"twice", []User{{Name: "alice", PartitionAccess: all(RoleGuest)}, {Name: "alice", PartitionAccess: all(RoleAdmin)}}, ErrExists},
		{"bad name", []User{{Name: "al ice", PartitionAccess: all(RoleGuest)}}, ErrInvalid},
		{"leading dash", []User{{Name: "-alice", PartitionAccess: all(RoleGuest)}}, ErrInvalid},
		{"no access", []User{{Name: "alice"}}, ErrInvalid},
		{"unknown role", []User{{Name: "alice", PartitionAccess: all("manager")}}, ErrInvalid},
		{"one partition", []User{{Name: "alice", PartitionAccess: []PartitionAccess{{Partition: "RPC", Role: RoleGuest}}}}, ErrInvalid},
		{"all-partitions twice", []User{{Name: "alice", PartitionAccess: append(all(RoleGuest), all(RoleAdmin)...)}}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := galera()
			c.Shared.Users = tt.users
			err := c.Validate()
			if tt.want == nil && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRole(t *testing.T) {
	c := New("lb1")
	c.Shared.Users = []User{
		{Name: "alice", PartitionAccess: []PartitionAccess{{Partition: AllPartitions, Role: RoleGuest}}},
		{Name: "oscar", PartitionAccess: []PartitionAccess{{Partition: AllPartitions, Role: RoleOperator}}},
	}
	tests := []struct {
		user string
		role Role
		ok   bool
	}{
		{"alice", RoleGuest, true},
		{"oscar", RoleOperator, true},
		{"admin", RoleAdmin, true}, // built in
		{"mallory", "", false},
	}
	for _, tt := range tests {
		role, ok := c.Role(tt.user)
		if role != tt.role || ok != tt.ok {
			t.Errorf("Role(%q) = %q, %v; want %q, %v", tt.user, role, ok, tt.role, tt.ok)
		}
	}
	// An auth user admin object overrides the built-in role.
	c.Shared.Users = append(c.Shared.Users, User{Name: "admin", PartitionAccess: []PartitionAccess{{Partition: AllPartitions, Role: RoleGuest}}})
	if role, _ := c.Role("admin"); role != RoleGuest {
		t.Errorf("Role(admin) with an object = %q, want guest", role)
	}
}
