package bench

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/tests/labnet"
)

// stampsRuleset registers NAT and a rule that uses conntrack, so that the namespace accepts
// the synthetic flows' NATed entries, as a device's ruleset does.
const stampsRuleset = `table inet stamps {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ct state new counter
	}
	chain post { type nat hook postrouting priority srcnat; policy accept; }
}
`

// stampsNS makes a namespace with stampsRuleset, removed at cleanup.
func stampsNS(t *testing.T, name string) string {
	t.Helper()
	ns := fmt.Sprintf("bst%d-%s", os.Getpid(), name)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(stampsRuleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v: %s", ns, err, out)
	}
	return ns
}

func openTableIn(t *testing.T, ns string) *conntrack.Table {
	t.Helper()
	var tbl *conntrack.Table
	if err := labnet.Do(ns, func() (err error) { tbl, err = conntrack.Open(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Close() })
	return tbl
}

func injectAll(t *testing.T, tbl *conntrack.Table, flows []conntrack.Flow) {
	t.Helper()
	for i, err := range tbl.InjectBatch(flows) {
		if err != nil {
			t.Fatalf("inject %v: %v", flows[i].Orig, err)
		}
	}
}

// TestKernelStamps checks the bench's lag instrument against a known delay: entries made in
// one namespace, and the same entries made in another a known time later, must be measured
// that far apart, whether the instrument learns their stamps from a destroy event (deleted
// while it runs) or from its final dump (still there), and whatever it does not see of the
// virtual server (another destination, an entry made before it started) is left out.
func TestKernelStamps(t *testing.T) {
	labnet.RequireRoot(t, "conntrack timestamps in namespaces")
	active, standby := stampsNS(t, "a"), stampsNS(t, "s")
	flows := []conntrack.Flow{syntheticFlow(0), syntheticFlow(1), syntheticFlow(2)}
	dst := flows[0].Orig.Dst
	other := syntheticFlow(3)
	other.Orig.Dst = netip.AddrPortFrom(dst.Addr(), dst.Port()+1)
	other.Reply.Src = netip.AddrPortFrom(other.Reply.Src.Addr(), dst.Port()+1)
	before := syntheticFlow(4)

	tblA, tblS := openTableIn(t, active), openTableIn(t, standby)
	injectAll(t, tblA, []conntrack.Flow{before})
	onActive, err := watchStamps(active, 6, dst)
	if err != nil {
		t.Fatal(err)
	}
	onStandby, err := watchStamps(standby, 6, dst)
	if err != nil {
		onActive.stop()
		t.Fatal(err)
	}

	const delay = 50 * time.Millisecond
	injectAll(t, tblA, append(flows, other))
	time.Sleep(delay)
	injectAll(t, tblS, flows)
	for _, tbl := range []*conntrack.Table{tblA, tblS} { // the first one ends while watched
		if err := tbl.Delete(flows[0]); err != nil {
			t.Fatal(err)
		}
	}

	created, errA := onActive.stop()
	arrived, errS := onStandby.stop()
	if errA != nil || errS != nil {
		t.Fatal(errA, errS)
	}
	for _, ns := range []string{active, standby} {
		var on []byte
		labnet.Do(ns, func() (err error) {
			on, err = os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_timestamp")
			return err
		})
		if strings.TrimSpace(string(on)) != "0" {
			t.Errorf("%s: nf_conntrack_timestamp %q after stop, want it off again", ns, on)
		}
	}
	if len(created) != len(flows) || len(arrived) != len(flows) {
		t.Fatalf("stamps on the active %v, on the standby %v: want the %d flows of %v only", created, arrived, len(flows), dst)
	}
	for _, f := range flows {
		key := TupleKey{Proto: 6, Src: f.Orig.Src, Dst: dst}
		lag := arrived[key].Sub(created[key])
		// The kernel stamps the entries of a batch microseconds apart; the sleep is at
		// least delay, and more only by the scheduler's lateness.
		if lag < delay || lag > delay+time.Second {
			t.Errorf("%v: measured lag %v, made %v apart", f.Orig.Src, lag, delay)
		}
		t.Logf("%v: lag %v", f.Orig.Src, lag)
		if d := time.Since(created[key]); d < 0 || d > time.Minute {
			t.Errorf("%v: stamped %v, %v from now: not the kernel's real-time clock", f.Orig.Src, created[key], d)
		}
	}
}
