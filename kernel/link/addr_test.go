package link

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/openappliance/appliance/kernel/internal/nstest"
)

// TestAddresses proves that AddAddress and DeleteAddress are idempotent, that Addresses
// reports what the kernel holds (including an address someone else added), and that the
// kernel state matches `ip addr show` after each step.
func TestAddresses(t *testing.T) {
	ns := nstest.New(t, "lnkAddr")
	ns.MustRun("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.MustRun("ip", "link", "set", "v0", "up")

	p4 := netip.MustParsePrefix("10.9.1.1/24")
	p4host := netip.MustParsePrefix("10.9.1.1/32") // same address, other prefix length
	p6 := netip.MustParsePrefix("2001:db8:1::1/64")
	other := netip.MustParsePrefix("10.9.1.7/32") // added by `ip addr add`, not by us

	list := func() []netip.Prefix {
		t.Helper()
		var got []netip.Prefix
		ns.MustDo(func() error {
			var err error
			got, err = Addresses("v0")
			return err
		})
		return got
	}
	ipShow := func() string { return ns.MustRun("ip", "-o", "addr", "show", "dev", "v0") }

	ns.MustDo(func() error {
		for _, p := range []netip.Prefix{p4, p4, p6, p6} {
			if err := AddAddress("v0", p); err != nil {
				return err
			}
		}
		return nil
	})
	got := list()
	for _, p := range []netip.Prefix{p4, p6} {
		if !slices.Contains(got, p) {
			t.Errorf("Addresses = %v, want it to hold %s", got, p)
		}
	}
	show := ipShow()
	if !strings.Contains(show, "inet 10.9.1.1/24 ") || !strings.Contains(show, "inet6 2001:db8:1::1/64 ") {
		t.Errorf("ip addr show after add:\n%s", show)
	}
	// IPv6 goes in without DAD, usable at once (never "tentative").
	for _, line := range strings.Split(show, "\n") {
		if strings.Contains(line, "2001:db8:1::1/64") && (!strings.Contains(line, "nodad") || strings.Contains(line, "tentative")) {
			t.Errorf("IPv6 address not added with nodad: %s", line)
		}
	}

	// Someone else's address shows up.
	ns.MustRun("ip", "addr", "add", other.String(), "dev", "v0")
	if got := list(); !slices.Contains(got, other) {
		t.Errorf("Addresses = %v, want it to hold %s added by ip addr add", got, other)
	}

	// IPv4 may hold one address with two prefix lengths; deleting one leaves the other.
	ns.MustDo(func() error { return AddAddress("v0", p4host) })
	if got := list(); !slices.Contains(got, p4) || !slices.Contains(got, p4host) {
		t.Errorf("Addresses = %v, want both %s and %s", got, p4, p4host)
	}
	ns.MustDo(func() error { return DeleteAddress("v0", p4host) })
	if got := list(); !slices.Contains(got, p4) || slices.Contains(got, p4host) {
		t.Errorf("after deleting %s: Addresses = %v, want %s kept", p4host, got, p4)
	}

	// IPv6 keys an address by the address alone: the other prefix length is a conflict.
	ns.MustDo(func() error {
		err := AddAddress("v0", netip.MustParsePrefix("2001:db8:1::1/128"))
		if !errors.Is(err, ErrPrefixConflict) {
			t.Errorf("AddAddress(2001:db8:1::1/128) with /64 present: err = %v, want ErrPrefixConflict", err)
		}
		return nil
	})

	ns.MustDo(func() error {
		for _, p := range []netip.Prefix{p4, p4, p6, p6} {
			if err := DeleteAddress("v0", p); err != nil {
				return err
			}
		}
		return nil
	})
	got = list()
	if slices.Contains(got, p4) || slices.Contains(got, p6) {
		t.Errorf("after delete: Addresses = %v, still holds %s or %s", got, p4, p6)
	}
	if !slices.Contains(got, other) {
		t.Errorf("after delete: Addresses = %v, lost %s which we never touched", got, other)
	}
	if show := ipShow(); strings.Contains(show, "10.9.1.1/") || strings.Contains(show, "2001:db8:1::1/") {
		t.Errorf("ip addr show after delete:\n%s", show)
	}
}

// TestMissingInterface proves that every call on an interface that does not exist fails
// with an error that names the interface and wraps ErrNoInterface (InterfaceUp says down).
func TestMissingInterface(t *testing.T) {
	ns := nstest.New(t, "lnkMiss")
	p := netip.MustParsePrefix("10.9.2.1/24")
	ns.MustDo(func() error {
		_, lerr := Addresses("nosuch0")
		_, aerr := NewAnnouncer(nil).Announce(t.Context(), "nosuch0", []netip.Addr{p.Addr()}, 0, 0)
		for name, err := range map[string]error{
			"AddAddress":    AddAddress("nosuch0", p),
			"DeleteAddress": DeleteAddress("nosuch0", p),
			"Addresses":     lerr,
			"Announce":      aerr,
		} {
			if !errors.Is(err, ErrNoInterface) || !strings.Contains(err.Error(), "nosuch0") {
				t.Errorf("%s(nosuch0): err = %v, want ErrNoInterface naming nosuch0", name, err)
			}
		}
		up, err := InterfaceUp("nosuch0")
		if up || err != nil {
			t.Errorf("InterfaceUp(nosuch0) = %v, %v; want false, nil", up, err)
		}
		return nil
	})
}

// TestInterfaceUp proves InterfaceUp against links in each state: up with carrier,
// administratively down, and up without carrier (veth peer down: "lowerlayerdown").
func TestInterfaceUp(t *testing.T) {
	ns := nstest.New(t, "lnkUp")
	ns.MustRun("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")

	expect := func(name, ifname string, want bool) {
		t.Helper()
		waitFor(t, name, func() (bool, string) {
			var up bool
			ns.MustDo(func() error {
				var err error
				up, err = InterfaceUp(ifname)
				return err
			})
			return up == want, ns.MustRun("ip", "link", "show", ifname)
		})
	}

	expect("new link is down", "v0", false)
	ns.MustRun("ip", "link", "set", "v0", "up")
	expect("peer down: v0 lowerlayerdown", "v0", false)
	ns.MustRun("ip", "link", "set", "v1", "up")
	expect("both ends up", "v0", true)
	expect("loopback (operstate unknown) is up", "lo", true)
	ns.MustRun("ip", "link", "set", "v1", "down")
	expect("peer went down", "v0", false)
	ns.MustRun("ip", "link", "set", "v1", "up")
	expect("peer back up", "v0", true)
	ns.MustRun("ip", "link", "set", "v0", "down")
	expect("administratively down", "v0", false)
}
