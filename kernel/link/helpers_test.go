package link

import (
	"strings"
	"testing"
	"time"

	"github.com/openappliance/appliance/kernel/internal/nstest"
)

// waitTimeout bounds every wait on the kernel in these tests.
const waitTimeout = 5 * time.Second

// waitFor polls cond until it reports true or waitTimeout passes; then it fails the test
// with cond's last description of what it saw.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last saw: %s", what, waitTimeout, saw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vethPair makes namespaces A and B joined by a veth pair, vA in A and vB in B, both up.
func vethPair(t *testing.T) (a, b *nstest.NS) {
	t.Helper()
	a = nstest.New(t, "lnkA")
	b = nstest.New(t, "lnkB")
	a.MustRun("ip", "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", b.Name)
	a.MustRun("ip", "link", "set", "vA", "up")
	b.MustRun("ip", "link", "set", "vB", "up")
	return a, b
}

// mac returns the MAC address of ifname in ns, as the kernel prints it.
func mac(t *testing.T, ns *nstest.NS, ifname string) string {
	t.Helper()
	return strings.TrimSpace(ns.MustRun("cat", "/sys/class/net/"+ifname+"/address"))
}

// neighLladdr returns the link-layer address of ns's neighbour entry for ip on dev, and
// the whole `ip neigh show` line.
func neighLladdr(t *testing.T, ns *nstest.NS, ip, dev string) (string, string) {
	t.Helper()
	out := strings.TrimSpace(ns.MustRun("ip", "neigh", "show", ip, "dev", dev))
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "lladdr" {
			return f[i+1], out
		}
	}
	return "", out
}
