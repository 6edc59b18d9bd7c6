package nft

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Chain names, fixed so that people reading `nft list table inet NAME` find them.
const (
	chainPrerouting  = "prerouting"
	chainPostrouting = "postrouting"
	chainOutput      = "output"
)

// Registers as the kernel numbers them (include/uapi/linux/netfilter/nf_tables.h):
// 1..4 are the 16-byte registers, 8..23 the 4-byte ones over the same storage.
const (
	reg1     = unix.NFT_REG_1    // 16 bytes: an address
	reg2     = unix.NFT_REG_2    // the 16 bytes after reg1
	reg32_01 = unix.NFT_REG32_01 // the 4 bytes after an IPv4 address in reg1
)

// Chain priorities nft calls dstnat and srcnat (NF_IP_PRI_NAT_DST, NF_IP_PRI_NAT_SRC):
// after conntrack (-200), which the NAT hooks need.
// The raw priority (NF_IP_PRI_RAW) comes before conntrack, which notrack must.
const (
	priorityRaw    = -300
	priorityDstNAT = -100
	prioritySrcNAT = 100
)

// From linux/netfilter/nf_conntrack_common.h and nf_conntrack_tuple_common.h.
//
// google/nftables v0.3.0 sends NFTA_CT_DIRECTION as four bytes where the kernel's policy
// says one, so each load logs "netlink: 'applianced': attribute type 3 has an invalid
// length" in dmesg. It is harmless: the kernel reads the first byte, and the original
// direction is 0 in either width. The library's fix (PR #317) is in no release yet.
const (
	ctDirOriginal = 0    // IP_CT_DIR_ORIGINAL
	ctStatusDNAT  = 0x20 // IPS_DST_NAT: set by the DNAT in prerouting
)

// content is the whole desired table, in the order it must be added in the batch.
type content struct {
	table  *nftables.Table
	chains []*nftables.Chain
	rules  []ruleSpec
}

// ruleSpec is one rule and the map it looks up (if any), which must be added in the
// same batch before the rule.
type ruleSpec struct {
	set   *nftables.Set
	elems []nftables.SetElement
	rule  *nftables.Rule
}

// family holds what differs between IPv4 and IPv6 in the rules.
type family struct {
	nfproto   byte   // meta nfproto value and NAT family
	saddrOff  uint32 // source address offset in the network header
	daddrOff  uint32 // destination address offset in the network header
	addrLen   uint32
	addrType  nftables.SetDatatype
	portReg   uint32 // where a concatenated map's port lands after the address in reg1
	portUnrch uint8  // ICMP (v4) or ICMPv6 code for "port unreachable"
}

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return family{
			nfproto: unix.NFPROTO_IPV4, saddrOff: 12, daddrOff: 16, addrLen: 4,
			addrType:  nftables.TypeIPAddr,
			portReg:   reg32_01, // nft says "proto_min reg 9"
			portUnrch: 3,        // ICMP_PORT_UNREACH, RFC 792
		}
	}
	return family{
		nfproto: unix.NFPROTO_IPV6, saddrOff: 8, daddrOff: 24, addrLen: 16,
		addrType:  nftables.TypeIP6Addr,
		portReg:   reg2, // the 4 bytes after 16; nft says "proto_min reg 2"
		portUnrch: 4,    // ICMPV6_PORT_UNREACH, RFC 4443
	}
}

// build turns a valid Ruleset into the content of table inet NAME. It is pure: it
// touches no kernel and gives the same result for the same input (set IDs included,
// which only have to be unique within one batch).
func build(name string, rs Ruleset) content {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	pre := &nftables.Chain{
		Name:     chainPrerouting,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookRef(unix.NF_INET_PRE_ROUTING),
		Priority: nftables.ChainPriorityRef(priorityDstNAT),
	}
	post := &nftables.Chain{
		Name:     chainPostrouting,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookRef(unix.NF_INET_POST_ROUTING),
		Priority: nftables.ChainPriorityRef(prioritySrcNAT),
	}
	c := content{table: t, chains: []*nftables.Chain{pre, post}}

	// Rules are tried in order: a virtual on one port must win over an any-port
	// virtual on the same address.
	vs := slices.Clone(rs.Virtuals)
	slices.SortStableFunc(vs, func(a, b Virtual) int {
		return cmp.Compare(boolInt(a.Dest.Port() == 0), boolInt(b.Dest.Port() == 0))
	})

	if rs.NotrackMark != 0 {
		out := &nftables.Chain{
			Name:     chainOutput,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookRef(unix.NF_INET_LOCAL_OUT),
			Priority: nftables.ChainPriorityRef(priorityRaw),
		}
		c.chains = append(c.chains, out)
		c.rules = append(c.rules, ruleSpec{rule: &nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(rs.NotrackMark)},
			&expr.Notrack{},
		}}})
	}

	var ids mapIDs
	for _, v := range vs {
		c.rules = append(c.rules, dnatRule(t, pre, v, &ids))
	}
	for _, v := range vs {
		// An empty pool rejects, so no connection of it ever reaches postrouting.
		if len(v.SNAT) > 0 && len(v.Members) > 0 {
			c.rules = append(c.rules, snatRule(t, post, v, &ids))
		}
	}
	return c
}

// mapIDs numbers the maps of one build: the set ID ties a rule's lookup to a map added
// in the same batch, and the names count pools and SNAT pools apart for readability.
type mapIDs struct {
	set, pool, snatPool uint32
}

func (m *mapIDs) next(counter *uint32, prefix string) (id uint32, name string) {
	m.set++
	name = fmt.Sprintf("%s%d", prefix, *counter)
	*counter++
	return m.set, name
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// dnatRule matches the virtual's packets and sends them to its members round-robin,
// or rejects them when the pool is empty.
func dnatRule(t *nftables.Table, ch *nftables.Chain, v Virtual, ids *mapIDs) ruleSpec {
	f := familyOf(v.Dest.Addr())
	e := []expr.Any{
		// In an inet table the network header may be either family: check it first.
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
	}
	if v.Source.IsValid() && v.Source.Bits() > 0 {
		e = append(e, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff, Len: f.addrLen})
		e = append(e, matchPrefix(v.Source)...)
	}
	e = append(e,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: v.Dest.Addr().AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{v.Proto}},
	)
	if p := v.Dest.Port(); p != 0 {
		e = append(e,
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p)},
		)
	}

	rs := ruleSpec{}
	members := memberPorts(v)
	withPort := len(members) > 0 && members[0].Port() != 0
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1}
	switch len(members) {
	case 0:
		// An empty pool refuses the connection rather than letting it time out.
		if v.Proto == unix.IPPROTO_TCP {
			e = append(e, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
		} else {
			e = append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.portUnrch})
		}
	case 1:
		e = append(e, &expr.Immediate{Register: reg1, Data: members[0].Addr().AsSlice()})
		if withPort {
			e = append(e, &expr.Immediate{Register: reg2, Data: binaryutil.BigEndian.PutUint16(members[0].Port())})
			nat.RegProtoMin, nat.Specified = reg2, true
		}
		e = append(e, nat)
	default:
		dataType := f.addrType
		if withPort {
			dataType = nftables.MustConcatSetType(f.addrType, nftables.TypeInetService)
			nat.RegProtoMin, nat.Specified = f.portReg, true
		}
		id, name := ids.next(&ids.pool, "pool")
		rs.set = roundRobinMap(t, name, v.Name, id, dataType)
		for i, m := range members {
			val := m.Addr().AsSlice()
			if withPort {
				// Concatenated data is padded to 4-byte registers: port then 2 zero bytes.
				val = append(val, byte(m.Port()>>8), byte(m.Port()), 0, 0)
			}
			rs.elems = append(rs.elems, nftables.SetElement{Key: numgenKey(i), Val: val})
		}
		e = append(e, roundRobin(rs.set, len(members))...)
		e = append(e, nat)
	}
	rs.rule = &nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: comment(v.Name)}
	return rs
}

// memberPorts gives every member the port it is translated to. Port 0 keeps the
// client's port; when other members need a port (so all share one map of
// address.port) that is the virtual's own port, which Validate guarantees is set.
func memberPorts(v Virtual) []netip.AddrPort {
	anyPort := slices.ContainsFunc(v.Members, func(m netip.AddrPort) bool { return m.Port() != 0 })
	out := make([]netip.AddrPort, len(v.Members))
	for i, m := range v.Members {
		if anyPort && m.Port() == 0 {
			m = netip.AddrPortFrom(m.Addr(), v.Dest.Port())
		}
		out[i] = m
	}
	return out
}

// snatRule translates the source of the virtual's connections after DNAT. It matches
// the connection's original tuple, because the packet itself now carries the member's
// address.
func snatRule(t *nftables.Table, ch *nftables.Chain, v Virtual, ids *mapIDs) ruleSpec {
	f := familyOf(v.Dest.Addr())
	e := []expr.Any{
		// google/nftables cannot give the per-family ct keys (src_ip, dst_ip) the
		// direction they need, so the rule uses ct src/dst, which load 16 bytes in an
		// inet table (nft_ct.c) whatever the family. The family check makes the shorter
		// IPv4 compare unambiguous and gives nft the context to print the addresses.
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
		// Only connections the prerouting rule translated: a connection the appliance
		// itself opens to the virtual address is not the virtual's to rewrite.
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
	if v.Source.IsValid() && v.Source.Bits() > 0 {
		e = append(e, &expr.Ct{Register: reg1, Key: expr.CtKeySRC, Direction: ctDirOriginal})
		e = append(e, matchPrefix(v.Source)...)
	}
	e = append(e,
		&expr.Ct{Register: reg1, Key: expr.CtKeyDST, Direction: ctDirOriginal},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: v.Dest.Addr().AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{v.Proto}},
	)
	if p := v.Dest.Port(); p != 0 {
		e = append(e,
			&expr.Ct{Register: reg1, Key: expr.CtKeyPROTODST, Direction: ctDirOriginal},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p)},
		)
	}
	rs := ruleSpec{}
	if len(v.SNAT) == 1 {
		e = append(e, &expr.Immediate{Register: reg1, Data: v.SNAT[0].AsSlice()})
	} else {
		id, name := ids.next(&ids.snatPool, "snatpool")
		rs.set = roundRobinMap(t, name, v.Name, id, f.addrType)
		for i, a := range v.SNAT {
			rs.elems = append(rs.elems, nftables.SetElement{Key: numgenKey(i), Val: a.AsSlice()})
		}
		e = append(e, roundRobin(rs.set, len(v.SNAT))...)
	}
	e = append(e, &expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.nfproto), RegAddrMin: reg1})
	rs.rule = &nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: comment(v.Name)}
	return rs
}

// matchPrefix compares reg1 (holding an address) with p; the mask is left out for a
// host prefix.
func matchPrefix(p netip.Prefix) []expr.Any {
	p = p.Masked()
	addr := p.Addr().AsSlice()
	if p.Bits() == p.Addr().BitLen() {
		return []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addr}}
	}
	mask := make([]byte, len(addr))
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addr},
	}
}

// roundRobinMap is a map from a numgen value to a NAT target. It is named rather than
// anonymous only so that nft prints its keys right: google/nftables marks anonymous
// and constant sets' keys big-endian, while numgen writes a host-endian integer (the
// kernel does not care, but `nft list` would show 1 as 16777216). nft prints the key
// type as "type 0": it names an integer key only from typeof data, which
// google/nftables v0.3.0 cannot write.
func roundRobinMap(t *nftables.Table, name, virtual string, id uint32, data nftables.SetDatatype) *nftables.Set {
	return &nftables.Set{
		Table:        t,
		ID:           id,
		Name:         name,
		IsMap:        true,
		KeyType:      nftables.TypeInteger,
		KeyByteOrder: binaryutil.NativeEndian,
		DataType:     data,
		Comment:      virtual,
	}
}

// roundRobin loads the next of n counter values and looks the NAT target up in set,
// leaving the address in reg1 (and a port right after it).
func roundRobin(set *nftables.Set, n int) []expr.Any {
	return []expr.Any{
		&expr.Numgen{Register: reg1, Type: unix.NFT_NG_INCREMENTAL, Modulus: uint32(n)},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
	}
}

// numgenKey encodes i as numgen writes it: a host-endian 32-bit integer.
func numgenKey(i int) []byte {
	return binaryutil.NativeEndian.PutUint32(uint32(i))
}

// comment is the rule's userdata as nft writes it, so `nft list` shows the virtual.
func comment(name string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, name)
}
