package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var (
	ap  = netip.MustParseAddrPort
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// galera is the ruleset the privileged tests apply: the RPC Galera virtual of the
// product's reference configuration.
func galera() Ruleset {
	return Ruleset{Virtuals: []Virtual{{
		Name:  "/RPC/RPC_VS_GALERA",
		Proto: unix.IPPROTO_TCP,
		Dest:  ap("10.0.0.10:3306"),
		Members: []netip.AddrPort{
			ap("10.1.0.100:3306"), ap("10.1.0.101:3306"), ap("10.1.0.102:3306"), ap("10.1.0.103:3306"),
		},
		SNAT: []netip.Addr{ip("10.1.0.10")},
	}}}
}

// describe renders built content one line per object, in the order it is added,
// close to `nft --debug=netlink` (registers as numbered in the kernel, data in hex).
func describe(c content) []string {
	out := []string{fmt.Sprintf("table %d %s", c.table.Family, c.table.Name)}
	for _, ch := range c.chains {
		out = append(out, fmt.Sprintf("chain %s %s hook %d prio %d", ch.Name, ch.Type, *ch.Hooknum, *ch.Priority))
	}
	for _, r := range c.rules {
		if s := r.set; s != nil {
			var elems []string
			for _, e := range r.elems {
				elems = append(elems, fmt.Sprintf("%d : %x", binaryutil.NativeEndian.Uint32(e.Key), e.Val))
			}
			out = append(out, fmt.Sprintf("map %s id %d %s : %s %q { %s }", s.Name, s.ID, s.KeyType.Name, s.DataType.Name, s.Comment, strings.Join(elems, ", ")))
		}
		comment, _ := userdata.GetString(r.rule.UserData, userdata.TypeComment)
		var ex []string
		for _, e := range r.rule.Exprs {
			ex = append(ex, describeExpr(e))
		}
		out = append(out, fmt.Sprintf("rule %s %q: %s", r.rule.Chain.Name, comment, strings.Join(ex, "; ")))
	}
	return out
}

func describeExpr(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Meta:
		names := map[expr.MetaKey]string{expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeyMARK: "mark"}
		return fmt.Sprintf("meta %s => r%d", names[e.Key], e.Register)
	case *expr.Cmp:
		return fmt.Sprintf("cmp %d r%d %x", e.Op, e.Register, e.Data)
	case *expr.Payload:
		base := map[expr.PayloadBase]string{expr.PayloadBaseNetworkHeader: "nh", expr.PayloadBaseTransportHeader: "th"}
		return fmt.Sprintf("payload %s+%d/%d => r%d", base[e.Base], e.Offset, e.Len, e.DestRegister)
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise r%d = r%d & %x ^ %x len %d", e.DestRegister, e.SourceRegister, e.Mask, e.Xor, e.Len)
	case *expr.Ct:
		if e.Key == expr.CtKeySTATUS {
			return fmt.Sprintf("ct status => r%d", e.Register)
		}
		names := map[expr.CtKey]string{expr.CtKeySRC: "src", expr.CtKeyDST: "dst", expr.CtKeyPROTODST: "proto-dst"}
		return fmt.Sprintf("ct dir %d %s => r%d", e.Direction, names[e.Key], e.Register)
	case *expr.Immediate:
		return fmt.Sprintf("imm r%d %x", e.Register, e.Data)
	case *expr.Numgen:
		return fmt.Sprintf("numgen type %d mod %d off %d => r%d", e.Type, e.Modulus, e.Offset, e.Register)
	case *expr.Lookup:
		return fmt.Sprintf("lookup r%d @%s id %d => r%d(%t)", e.SourceRegister, e.SetName, e.SetID, e.DestRegister, e.IsDestRegSet)
	case *expr.NAT:
		s := fmt.Sprintf("nat %d fam %d addr r%d", e.Type, e.Family, e.RegAddrMin)
		if e.RegProtoMin != 0 {
			s += fmt.Sprintf(" proto r%d", e.RegProtoMin)
		}
		if e.Specified {
			s += " specified"
		}
		return s
	case *expr.Notrack:
		return "notrack"
	case *expr.Reject:
		return fmt.Sprintf("reject type %d code %d", e.Type, e.Code)
	}
	return fmt.Sprintf("unexpected %T", e)
}

// Expected fragments, named for what they match (IPv4 unless said).
const (
	chains     = "chain prerouting nat hook 0 prio -100|chain postrouting nat hook 4 prio 100"
	nfproto4   = "meta nfproto => r1; cmp 0 r1 02"
	nfproto6   = "meta nfproto => r1; cmp 0 r1 0a"
	tcp        = "meta l4proto => r1; cmp 0 r1 06"
	udp        = "meta l4proto => r1; cmp 0 r1 11"
	daddr10    = "payload nh+16/4 => r1; cmp 0 r1 0a00000a"
	dport3306  = "payload th+2/2 => r1; cmp 0 r1 0cea"
	ctDaddr10  = "ct dir 0 dst => r1; cmp 0 r1 0a00000a"
	ctDport    = "ct dir 0 proto-dst => r1; cmp 0 r1 0cea"
	snat10     = "imm r1 0a01000a; nat 0 fam 2 addr r1"
	dnatPrefix = nfproto4 + "; " + daddr10 + "; " + tcp + "; " + dport3306
)

// statusDNAT is IPS_DST_NAT as ct status holds it: a host-endian 32-bit integer.
var (
	statusDNAT = fmt.Sprintf("%x", binaryutil.NativeEndian.PutUint32(0x20))
	ctDNAT     = "ct status => r1; bitwise r1 = r1 & " + statusDNAT + " ^ 00000000 len 4; cmp 1 r1 00000000"
)

func TestBuild(t *testing.T) {
	vs := func(mut func(*Virtual)) Ruleset {
		v := galera().Virtuals[0]
		mut(&v)
		return Ruleset{Virtuals: []Virtual{v}}
	}
	members := func(n int) []netip.AddrPort {
		return galera().Virtuals[0].Members[:n]
	}
	tests := []struct {
		name string
		rs   Ruleset
		want []string // after the table and chain lines
	}{{
		name: "empty ruleset",
		rs:   Ruleset{},
		want: nil,
	}, {
		name: "one member",
		rs:   vs(func(v *Virtual) { v.Members = members(1); v.SNAT = nil }),
		want: []string{
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + dnatPrefix + "; imm r1 0a010064; imm r2 0cea; nat 1 fam 2 addr r1 proto r2 specified",
		},
	}, {
		name: "four members and one snat address",
		rs:   galera(),
		want: []string{
			`map pool0 id 1 integer : ipv4_addr . inet_service "/RPC/RPC_VS_GALERA" { 0 : 0a0100640cea0000, 1 : 0a0100650cea0000, 2 : 0a0100660cea0000, 3 : 0a0100670cea0000 }`,
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + dnatPrefix + "; numgen type 0 mod 4 off 0 => r1; lookup r1 @pool0 id 1 => r1(true); nat 1 fam 2 addr r1 proto r9 specified",
			`rule postrouting "/RPC/RPC_VS_GALERA": ` + nfproto4 + "; " + ctDNAT + "; " + ctDaddr10 + "; " + tcp + "; " + ctDport + "; " + snat10,
		},
	}, {
		name: "member port 0 keeps the port",
		rs:   vs(func(v *Virtual) { v.Members = []netip.AddrPort{ap("10.1.0.100:0")}; v.SNAT = nil }),
		want: []string{
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + dnatPrefix + "; imm r1 0a010064; nat 1 fam 2 addr r1",
		},
	}, {
		name: "members all port 0 on an any-port udp virtual",
		rs: vs(func(v *Virtual) {
			v.Proto, v.Dest, v.SNAT = unix.IPPROTO_UDP, ap("10.0.0.10:0"), nil
			v.Members = []netip.AddrPort{ap("10.1.0.100:0"), ap("10.1.0.101:0")}
		}),
		want: []string{
			`map pool0 id 1 integer : ipv4_addr "/RPC/RPC_VS_GALERA" { 0 : 0a010064, 1 : 0a010065 }`,
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + nfproto4 + "; " + daddr10 + "; " + udp + "; numgen type 0 mod 2 off 0 => r1; lookup r1 @pool0 id 1 => r1(true); nat 1 fam 2 addr r1",
		},
	}, {
		name: "member port 0 next to a member with a port takes the virtual's port",
		rs: vs(func(v *Virtual) {
			v.Members, v.SNAT = []netip.AddrPort{ap("10.1.0.100:0"), ap("10.1.0.101:3307")}, nil
		}),
		want: []string{
			`map pool0 id 1 integer : ipv4_addr . inet_service "/RPC/RPC_VS_GALERA" { 0 : 0a0100640cea0000, 1 : 0a0100650ceb0000 }`,
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + dnatPrefix + "; numgen type 0 mod 2 off 0 => r1; lookup r1 @pool0 id 1 => r1(true); nat 1 fam 2 addr r1 proto r9 specified",
		},
	}, {
		name: "no members tcp resets and needs no snat",
		rs:   vs(func(v *Virtual) { v.Members = nil }),
		want: []string{
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + dnatPrefix + "; reject type 1 code 0",
		},
	}, {
		name: "no members udp port unreachable",
		rs:   vs(func(v *Virtual) { v.Members, v.Proto, v.Dest = nil, unix.IPPROTO_UDP, ap("10.0.0.10:53") }),
		want: []string{
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + nfproto4 + "; " + daddr10 + "; " + udp + "; payload th+2/2 => r1; cmp 0 r1 0035; reject type 0 code 3",
		},
	}, {
		name: "two snat addresses and a source prefix",
		rs: vs(func(v *Virtual) {
			v.Members, v.Source = members(1), pfx("10.0.0.0/23")
			v.SNAT = []netip.Addr{ip("10.1.0.10"), ip("10.1.0.11")}
		}),
		want: []string{
			`rule prerouting "/RPC/RPC_VS_GALERA": ` + nfproto4 + "; payload nh+12/4 => r1; bitwise r1 = r1 & fffffe00 ^ 00000000 len 4; cmp 0 r1 0a000000; " + daddr10 + "; " + tcp + "; " + dport3306 + "; imm r1 0a010064; imm r2 0cea; nat 1 fam 2 addr r1 proto r2 specified",
			`map snatpool0 id 1 integer : ipv4_addr "/RPC/RPC_VS_GALERA" { 0 : 0a01000a, 1 : 0a01000b }`,
			`rule postrouting "/RPC/RPC_VS_GALERA": ` + nfproto4 + "; " + ctDNAT + "; ct dir 0 src => r1; bitwise r1 = r1 & fffffe00 ^ 00000000 len 4; cmp 0 r1 0a000000; " + ctDaddr10 + "; " + tcp + "; " + ctDport + "; numgen type 0 mod 2 off 0 => r1; lookup r1 @snatpool0 id 1 => r1(true); nat 0 fam 2 addr r1",
		},
	}, {
		name: "host source prefix needs no mask, zero-length prefix no match",
		rs: Ruleset{Virtuals: []Virtual{
			{Name: "a", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.10:3306"), Source: pfx("10.0.0.1/32"), Members: members(1)},
			{Name: "b", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.11:3306"), Source: pfx("0.0.0.0/0"), Members: members(1)},
		}},
		want: []string{
			`rule prerouting "a": ` + nfproto4 + "; payload nh+12/4 => r1; cmp 0 r1 0a000001; " + daddr10 + "; " + tcp + "; " + dport3306 + "; imm r1 0a010064; imm r2 0cea; nat 1 fam 2 addr r1 proto r2 specified",
			`rule prerouting "b": ` + nfproto4 + "; payload nh+16/4 => r1; cmp 0 r1 0a00000b; " + tcp + "; " + dport3306 + "; imm r1 0a010064; imm r2 0cea; nat 1 fam 2 addr r1 proto r2 specified",
		},
	}, {
		name: "any-port virtual comes after one on the same address",
		rs: Ruleset{Virtuals: []Virtual{
			{Name: "any", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.10:0")},
			{Name: "one", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.10:3306")},
		}},
		want: []string{
			`rule prerouting "one": ` + dnatPrefix + "; reject type 1 code 0",
			`rule prerouting "any": ` + nfproto4 + "; " + daddr10 + "; " + tcp + "; reject type 1 code 0",
		},
	}, {
		name: "ipv6 members with ports and snat",
		rs: Ruleset{Virtuals: []Virtual{{
			Name: "v6", Proto: unix.IPPROTO_TCP, Dest: ap("[fd00::10]:80"), Source: pfx("fd00::/48"),
			Members: []netip.AddrPort{ap("[fd01::1]:80"), ap("[fd01::2]:8080")},
			SNAT:    []netip.Addr{ip("fd01::10")},
		}}},
		want: []string{
			`map pool0 id 1 integer : ipv6_addr . inet_service "v6" { 0 : fd010000000000000000000000000001` + "00500000" + `, 1 : fd010000000000000000000000000002` + "1f900000" + ` }`,
			`rule prerouting "v6": ` + nfproto6 + "; payload nh+8/16 => r1; bitwise r1 = r1 & ffffffffffff00000000000000000000 ^ 00000000000000000000000000000000 len 16; cmp 0 r1 fd000000000000000000000000000000; payload nh+24/16 => r1; cmp 0 r1 fd000000000000000000000000000010; " + tcp + "; payload th+2/2 => r1; cmp 0 r1 0050; numgen type 0 mod 2 off 0 => r1; lookup r1 @pool0 id 1 => r1(true); nat 1 fam 10 addr r1 proto r2 specified",
			`rule postrouting "v6": ` + nfproto6 + "; " + ctDNAT + "; ct dir 0 src => r1; bitwise r1 = r1 & ffffffffffff00000000000000000000 ^ 00000000000000000000000000000000 len 16; cmp 0 r1 fd000000000000000000000000000000; ct dir 0 dst => r1; cmp 0 r1 fd000000000000000000000000000010; " + tcp + "; ct dir 0 proto-dst => r1; cmp 0 r1 0050; imm r1 fd010000000000000000000000000010; nat 0 fam 10 addr r1",
		},
	}, {
		name: "ipv6 no members udp",
		rs:   Ruleset{Virtuals: []Virtual{{Name: "v6", Proto: unix.IPPROTO_UDP, Dest: ap("[fd00::10]:53")}}},
		want: []string{
			`rule prerouting "v6": ` + nfproto6 + "; payload nh+24/16 => r1; cmp 0 r1 fd000000000000000000000000000010; " + udp + "; payload th+2/2 => r1; cmp 0 r1 0035; reject type 0 code 4",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.rs.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := describe(build("appliance", tt.rs))
			want := append([]string{"table 1 appliance"}, strings.Split(chains, "|")...)
			want = append(want, tt.want...)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("build (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildNotrackMark(t *testing.T) {
	got := describe(build("appliance", Ruleset{NotrackMark: 0x7e1c}))
	want := append([]string{"table 1 appliance"}, strings.Split(chains, "|")...)
	want = append(want,
		"chain output filter hook 3 prio -300",
		fmt.Sprintf(`rule output "": meta mark => r1; cmp 0 r1 %x; notrack`, binaryutil.NativeEndian.PutUint32(0x7e1c)))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("build (-want +got):\n%s", diff)
	}
}

// TestBuildPure: the same input gives the same content, and the caller's slices are
// left alone (the builder sorts a copy).
func TestBuildPure(t *testing.T) {
	rs := Ruleset{Virtuals: []Virtual{
		{Name: "any", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.10:0")},
		galera().Virtuals[0],
	}}
	a, b := describe(build("appliance", rs)), describe(build("appliance", rs))
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("two builds differ (-first +second):\n%s", diff)
	}
	if rs.Virtuals[0].Name != "any" {
		t.Errorf("build reordered the caller's virtuals")
	}
}

func TestValidate(t *testing.T) {
	ok := galera().Virtuals[0]
	with := func(mut func(*Virtual)) Virtual {
		v := ok
		v.Members = append([]netip.AddrPort(nil), ok.Members...)
		mut(&v)
		return v
	}
	tests := []struct {
		name     string
		rs       Ruleset
		wantName string // "" for a valid ruleset; else the virtual named in the error
	}{
		{"galera", galera(), ""},
		{"empty", Ruleset{}, ""},
		{"any port, all members with ports", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Dest = ap("10.0.0.10:0") })}}, ""},
		{"any source prefix", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Source = pfx("0.0.0.0/0") })}}, ""},
		{"same address tcp and udp", Ruleset{Virtuals: []Virtual{ok, with(func(v *Virtual) { v.Name, v.Proto = "udp", unix.IPPROTO_UDP })}}, ""},
		{"zero dest", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Dest = netip.AddrPort{} })}}, ok.Name},
		{"unspecified dest", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Dest = ap("0.0.0.0:80") })}}, ok.Name},
		{"unsupported proto", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Proto = unix.IPPROTO_SCTP })}}, ok.Name},
		{"zero proto", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Proto = 0 })}}, ok.Name},
		{"ipv6 member for ipv4 virtual", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Members[1] = ap("[fd01::1]:3306") })}}, ok.Name},
		{"ipv4 member for ipv6 virtual", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Dest, v.SNAT = ap("[fd00::10]:3306"), nil })}}, ok.Name},
		{"ipv6 snat for ipv4 virtual", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.SNAT = []netip.Addr{ip("fd01::10")} })}}, ok.Name},
		{"ipv6 source for ipv4 virtual", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Source = pfx("fd00::/8") })}}, ok.Name},
		{"ipv4-mapped member", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Members[0] = ap("[::ffff:10.1.0.100]:3306") })}}, ok.Name},
		{"zoned member", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Members[0] = ap("[fe80::1%eth0]:3306") })}}, ok.Name},
		{"zero member", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Members[0] = netip.AddrPort{} })}}, ok.Name},
		{"duplicate member", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Members[1] = v.Members[0] })}}, ok.Name},
		{"duplicate snat", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.SNAT = []netip.Addr{ip("10.1.0.10"), ip("10.1.0.10")} })}}, ok.Name},
		{"zero snat", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.SNAT = []netip.Addr{{}} })}}, ok.Name},
		{"any port mixing member ports", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) {
			v.Dest, v.Members[0] = ap("10.0.0.10:0"), ap("10.1.0.100:0")
		})}}, ok.Name},
		{"duplicate dest and proto", Ruleset{Virtuals: []Virtual{ok, with(func(v *Virtual) { v.Name = "/Common/other" })}}, "/Common/other"},
		{"duplicate name", Ruleset{Virtuals: []Virtual{ok, with(func(v *Virtual) { v.Dest = ap("10.0.0.11:3306") })}}, ok.Name},
		{"empty name", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Name = "" })}}, "#0"},
		{"long name", Ruleset{Virtuals: []Virtual{with(func(v *Virtual) { v.Name = strings.Repeat("x", 129) })}}, strings.Repeat("x", 129)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.rs.Validate()
			switch {
			case tt.wantName == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantName == "":
				return
			case err == nil:
				t.Fatalf("Validate accepted it, want an error naming %q", tt.wantName)
			case !errors.Is(err, ErrInvalid):
				t.Errorf("Validate: %v does not wrap ErrInvalid", err)
			case !strings.Contains(err.Error(), tt.wantName):
				t.Errorf("Validate: %v does not name the virtual %q", err, tt.wantName)
			}
			t.Log(err)
		})
	}
}

// fakeKernel stands in for the netlink socket: it records each batch it is sent and
// echoes it back, which google/nftables reads as one acknowledgement per message.
type fakeKernel struct {
	batches [][]netlink.HeaderType
}

func (k *fakeKernel) dial(req []netlink.Message) ([]netlink.Message, error) {
	if req == nil {
		return nil, nil // a receive with nothing queued: the echoed batch held the acks
	}
	var types []netlink.HeaderType
	for _, m := range req {
		types = append(types, m.Header.Type)
	}
	k.batches = append(k.batches, types)
	return req, nil
}

// Message types as they appear in a batch.
const (
	msgBatchBegin = netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN)
	msgBatchEnd   = netlink.HeaderType(unix.NFNL_MSG_BATCH_END)
	msgNewTable   = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE)
	msgDelTable   = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELTABLE)
	msgNewChain   = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWCHAIN)
	msgNewSet     = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSET)
	msgNewElems   = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	msgNewRule    = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE)
)

// TestApplyOneBatch feeds Apply and Remove through a fake transport: each is exactly
// one batch, the table is deleted and re-added inside it, and an invalid ruleset sends
// nothing at all.
func TestApplyOneBatch(t *testing.T) {
	k := &fakeKernel{}
	tbl := newTable("appliance", nftables.WithTestDial(k.dial))
	defer tbl.Close()

	if err := tbl.Apply(galera()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	bad := galera()
	bad.Virtuals[0].Proto = unix.IPPROTO_ICMP
	if err := tbl.Apply(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Apply(invalid) = %v, want ErrInvalid", err)
	}
	if err := tbl.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	want := [][]netlink.HeaderType{
		{msgBatchBegin, msgNewTable, msgDelTable, msgNewTable, msgNewChain, msgNewChain, msgNewSet, msgNewElems, msgNewRule, msgNewRule, msgBatchEnd},
		{msgBatchBegin, msgNewTable, msgDelTable, msgBatchEnd},
	}
	if diff := cmp.Diff(want, k.batches); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}

	if err := tbl.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := tbl.Apply(galera()); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
}

func TestNewRefusesBadNames(t *testing.T) {
	for _, name := range []string{"", strings.Repeat("t", unix.NFT_TABLE_MAXNAMELEN)} {
		if _, err := New(name); err == nil {
			t.Errorf("New(%q) succeeded", name)
		}
	}
}
