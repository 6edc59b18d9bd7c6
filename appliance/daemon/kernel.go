package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/kernel/link"
	"github.com/openappliance/appliance/kernel/nft"
	"golang.org/x/sys/unix"
)

// buildRuleset turns the configuration into the nftables table the kernel must hold.
func buildRuleset(c *config.Config) nft.Ruleset {
	rs := nft.Ruleset{NotrackMark: tickleMark}
	for _, v := range c.Shared.Virtuals {
		if v.Disabled {
			continue
		}
		nv := nft.Virtual{Name: v.Name, Proto: protoNumber(v.IPProtocol), Dest: v.Destination, Source: v.Source}
		if p, i := c.Shared.FindPool(v.Pool); i >= 0 {
			for _, m := range p.Members {
				if !m.Disabled {
					nv.Members = append(nv.Members, m.Address)
				}
			}
		}
		if v.SNATType == "snat" {
			if sp, i := c.Shared.FindSNATPool(v.SNATPool); i >= 0 {
				nv.SNAT = append(nv.SNAT, sp.Members...)
			}
		}
		rs.Virtuals = append(rs.Virtuals, nv)
	}
	return rs
}

func protoNumber(name string) uint8 {
	if name == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// reconcile brings the kernel from cur's state to next's: the nftables table in one batch,
// the self IPs, and (on the Active device) the floating addresses. Called with mu held.
func (d *Daemon) reconcile(cur, next *config.Config) error {
	if err := d.nft.Apply(buildRuleset(next)); err != nil {
		return fmt.Errorf("program nftables: %w", err)
	}
	d.reconcileSelfs(cur, next)
	if d.active {
		added := d.addFloating(next, cur)
		d.removeFloating(cur, next)
		d.announce(added)
	} else {
		d.removeFloating(next, nil)
	}
	return nil
}

func selfKey(ifname string, p netip.Prefix) string { return ifname + " " + p.String() }

func (c selfAddr) key() string { return selfKey(c.ifname, c.prefix) }

type selfAddr struct {
	name   string
	ifname string
	prefix netip.Prefix
}

func selfAddrs(c *config.Config) []selfAddr {
	var out []selfAddr
	for _, s := range c.Local.Selfs {
		if v, i := c.Local.FindVLAN(s.VLAN); i >= 0 && len(v.Interfaces) > 0 {
			out = append(out, selfAddr{name: s.Name, ifname: v.Interfaces[0], prefix: s.Address})
		}
	}
	return out
}

// reconcileSelfs puts the self IPs on their interfaces. One that is there already was put
// there by the host's own network configuration: it is adopted and never removed.
func (d *Daemon) reconcileSelfs(cur, next *config.Config) {
	want := map[string]bool{}
	for _, s := range selfAddrs(next) {
		want[s.key()] = true
		if d.added[s.key()] || d.adopted[s.key()] {
			continue
		}
		present, err := hasAddress(s.ifname, s.prefix)
		if err != nil {
			d.logger.Warn("self IP: interface not usable yet", "self", s.name, "interface", s.ifname, slog.Any("err", err))
			continue
		}
		if present {
			d.adopted[s.key()] = true
			d.logger.Info("self IP adopted: already on its interface", "self", s.name, "address", s.prefix, "interface", s.ifname)
			continue
		}
		if err := link.AddAddress(s.ifname, s.prefix); err != nil {
			d.logger.Warn("add self IP", "self", s.name, "interface", s.ifname, slog.Any("err", err))
			continue
		}
		d.added[s.key()] = true
		d.logger.Info("self IP added", "self", s.name, "address", s.prefix, "interface", s.ifname)
	}
	for _, s := range selfAddrs(cur) {
		if want[s.key()] {
			continue
		}
		delete(d.adopted, s.key())
		if !d.added[s.key()] {
			continue
		}
		if err := link.DeleteAddress(s.ifname, s.prefix); err != nil {
			d.logger.Warn("remove self IP", "self", s.name, "interface", s.ifname, slog.Any("err", err))
			continue
		}
		delete(d.added, s.key())
		d.logger.Info("self IP removed", "self", s.name, "address", s.prefix, "interface", s.ifname)
	}
}

func hasAddress(ifname string, p netip.Prefix) (bool, error) {
	addrs, err := link.Addresses(ifname)
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if a.Addr() == p.Addr() {
			return true, nil
		}
	}
	return false, nil
}

// addFloating adds next's floating addresses that are not up yet and returns the ones
// added, by interface, for gratuitous ARP. prev, if given, holds the ones already up.
func (d *Daemon) addFloating(next, prev *config.Config) map[string][]netip.Addr {
	up := map[netip.Addr]string{}
	if prev != nil {
		for _, fa := range prev.FloatingAddresses() {
			up[fa.Addr] = fa.Interface
		}
	}
	added := map[string][]netip.Addr{}
	for _, fa := range next.FloatingAddresses() {
		if fa.Interface == "" {
			d.logger.Warn("floating address has no VLAN: no self IP subnet holds it, so it is not placed on an interface", "address", fa.Addr, "owner", fa.Owner)
			continue
		}
		if up[fa.Addr] == fa.Interface {
			continue
		}
		if err := link.AddAddress(fa.Interface, hostPrefix(fa.Addr)); err != nil {
			d.logger.Error("add floating address", "address", fa.Addr, "interface", fa.Interface, slog.Any("err", err))
			continue
		}
		added[fa.Interface] = append(added[fa.Interface], fa.Addr)
		d.logger.Info("floating address up", "address", fa.Addr, "interface", fa.Interface, "owner", fa.Owner)
	}
	return added
}

// removeFloating removes from and's interfaces the floating addresses of from that keep
// (if given) does not hold on the same interface.
func (d *Daemon) removeFloating(from, keep *config.Config) {
	kept := map[netip.Addr]string{}
	if keep != nil {
		for _, fa := range keep.FloatingAddresses() {
			kept[fa.Addr] = fa.Interface
		}
	}
	for _, fa := range from.FloatingAddresses() {
		if fa.Interface == "" || kept[fa.Addr] == fa.Interface {
			continue
		}
		err := link.DeleteAddress(fa.Interface, hostPrefix(fa.Addr))
		if errors.Is(err, link.ErrNoInterface) {
			continue
		}
		if err != nil {
			d.logger.Error("remove floating address", "address", fa.Addr, "interface", fa.Interface, slog.Any("err", err))
		}
	}
}

// garpRepeat and garpInterval: at once, then a few more over about two seconds, so that a
// neighbour that missed the first still learns the move (MetalLB does the same).
const (
	garpRepeat   = 4
	garpInterval = 500 * time.Millisecond
)

// announce sends gratuitous ARP for addresses that just came up, in the background. The
// repeats end when the device leaves Active: announcing addresses it no longer holds would
// pull the neighbours back to it. Called with mu held.
func (d *Daemon) announce(byIf map[string][]netip.Addr) {
	for ifname, addrs := range byIf {
		d.roles.goActive(func(ctx context.Context) {
			n, err := d.announcer.Announce(ctx, ifname, addrs, garpRepeat, garpInterval)
			if err != nil && ctx.Err() == nil {
				d.logger.Warn("gratuitous ARP", "interface", ifname, slog.Any("err", err))
			}
			d.logger.Info("gratuitous ARP sent", "interface", ifname, "addresses", addrs, "packets", n)
		})
	}
}
