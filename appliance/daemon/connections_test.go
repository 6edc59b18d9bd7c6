package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/appliance/tmsh"
	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNS is a network namespace of one test, removed when it ends.
type testNS struct{ name string }

// netnsPrefixEnv names the variable whose value, when set, prefixes the test namespaces'
// names: make bench runs BenchmarkStandbyFullSync with its own prefix, so that a bench run
// killed meanwhile leaves namespaces that the next one knows to remove.
const netnsPrefixEnv = "APPLIANCE_TEST_NETNS_PREFIX"

// tag tells apart the namespaces of one test.
func newTestNS(t testing.TB, tag string) testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		if testing.Short() && os.Getenv("CI") != "true" {
			t.Skip("privileged test: left out by -short")
		}
		t.Fatal("privileged test needs root (network namespaces); run as root, or with -short to leave it out")
	}
	name := fmt.Sprintf("d%s%d", tag, os.Getpid()%100000)
	if prefix := os.Getenv(netnsPrefixEnv); prefix != "" {
		name = prefix + "-" + name
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	// Conntrack's hooks are registered only once a rule needs them; the NAT chains let
	// injected NAT entries be created.
	file := filepath.Join(t.TempDir(), "ct.nft")
	const ruleset = `table inet ctnat {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ct state new counter
	}
	chain post { type nat hook postrouting priority srcnat; policy accept; }
}
`
	if err := os.WriteFile(file, []byte(ruleset), 0o600); err != nil {
		t.Fatal(err)
	}
	ns := testNS{name: name}
	ns.run(t, "nft", "-f", file)
	return ns
}

// run runs a command inside the namespace and returns its output.
func (ns testNS) run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", strings.Join(args, " "), ns.name, err, out)
	}
	return string(out)
}

// do runs fn on a locked thread inside the namespace and puts the thread back after.
func (ns testNS) do(t testing.TB, fn func() error) {
	t.Helper()
	err := func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns.name)
		if err != nil {
			return err
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return err
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("restore netns: %v", err))
		}
		return fnErr
	}()
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeleteConnections: delete sys connection removes the matching entries of virtual
// servers from the kernel, and nothing else.
func TestDeleteConnections(t *testing.T) {
	ns := newTestNS(t, "conn")
	ap := netip.MustParseAddrPort
	flow := func(client, dst, member string) conntrack.Flow {
		return conntrack.Flow{Proto: unix.IPPROTO_UDP, Timeout: 60,
			Orig:  conntrack.Tuple{Src: ap(client), Dst: ap(dst)},
			Reply: conntrack.Tuple{Src: ap(member), Dst: ap(client)}}
	}
	flows := []conntrack.Flow{
		flow("10.0.0.1:5000", "10.0.0.10:53", "10.1.0.100:53"),
		flow("10.0.0.2:5000", "10.0.0.10:53", "10.1.0.101:53"),
		flow("10.0.0.3:5000", "10.0.0.10:53", "10.1.0.100:53"),
		flow("10.0.0.1:6000", "10.0.0.99:53", "10.0.0.99:53"), // not a virtual server's
	}
	cfg := config.New("lb1")
	cfg.Shared.Virtuals = []config.Virtual{{Name: "/Common/vs_dns", IPProtocol: "udp", Destination: ap("10.0.0.10:53")}}
	d := &Daemon{logger: slog.New(slog.DiscardHandler)}
	d.mirror.Store(newVirtualIndex(&cfg))
	ctx := context.Background()
	ns.do(t, func() error {
		tbl, err := conntrack.Open()
		if err != nil {
			return err
		}
		defer tbl.Close()
		for _, f := range flows {
			if err := tbl.Inject(f); err != nil {
				return fmt.Errorf("inject %v: %w", f, err)
			}
		}
		for _, tc := range []struct {
			filter  tmsh.ConnFilter
			deleted int
			left    int
		}{
			{filter: tmsh.ConnFilter{SSServerAddr: netip.MustParseAddr("10.1.0.101")}, deleted: 1, left: 2},
			{filter: tmsh.ConnFilter{CSClientAddr: netip.MustParseAddr("10.0.0.9")}, deleted: 0, left: 2},
			{filter: tmsh.ConnFilter{}, deleted: 2, left: 0},
		} {
			n, err := d.DeleteConnections(ctx, tc.filter)
			if err != nil {
				return err
			}
			left := 0
			if err := d.Connections(ctx, tmsh.ConnFilter{}, func(tmsh.Connection) error { left++; return nil }); err != nil {
				return err
			}
			if n != tc.deleted || left != tc.left {
				t.Errorf("filter %+v: deleted %d, %d left; want %d, %d left", tc.filter, n, left, tc.deleted, tc.left)
			}
		}
		// The entry of no virtual server stays.
		if _, ok, err := tbl.Get(unix.IPPROTO_UDP, flows[3].Orig); err != nil || !ok {
			t.Errorf("unrelated entry: ok %v, err %v; want it kept", ok, err)
		}
		return nil
	})
}
