package conntrack

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openappliance/appliance/kernel/internal/nstest"
)

// natRuleset registers the NAT hooks for IPv4 and IPv6, with no NAT rules. The NAT chains
// alone do not make the namespace track packets: conntrack's hooks are registered only
// once a rule needs them (nf_ct_netns_get, called by the nat and ct expressions), and an
// untracked packet ignores any entry. So a rule that uses conntrack is needed too.
const natRuleset = `table inet ctnat {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ct state new counter
	}
	chain post { type nat hook postrouting priority srcnat; policy accept; }
}
`

// natNS returns a fresh namespace with natRuleset loaded.
func natNS(t testing.TB, prefix string) *nstest.NS {
	t.Helper()
	ns := nstest.New(t, prefix)
	loadRuleset(t, ns, natRuleset)
	return ns
}

// loadRuleset loads an nft ruleset into ns with "nft -f".
func loadRuleset(t testing.TB, ns *nstest.NS, ruleset string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(ruleset), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun("nft", "-f", file)
}

// openTable opens a Table inside ns, closed at cleanup.
func openTable(t testing.TB, ns *nstest.NS) *Table {
	t.Helper()
	var tbl *Table
	ns.MustDo(func() (err error) {
		tbl, err = Open()
		return err
	})
	t.Cleanup(func() {
		if err := tbl.Close(); err != nil {
			t.Error(err)
		}
	})
	return tbl
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func tup(src, dst string) Tuple { return Tuple{Src: ap(src), Dst: ap(dst)} }

// mustGet returns the entry with f's original tuple and fails the test if there is none.
func mustGet(t testing.TB, tbl *Table, f Flow) Flow {
	t.Helper()
	got, ok, err := tbl.Get(f.Proto, f.Orig)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("no entry for %v", f)
	}
	return got
}

// listen starts a Listener in ns and returns its events, buffered; Run is stopped through
// its context at cleanup and must then return nil.
func listen(t testing.TB, ns *nstest.NS, bufBytes int) (<-chan Event, *Listener) {
	t.Helper()
	var l *Listener
	ns.MustDo(func() (err error) {
		l, err = NewListener(bufBytes)
		return err
	})
	ch := make(chan Event, 1<<16)
	runListener(t, l, func(e Event) { ch <- e })
	return ch, l
}

// runListener runs l with fn until the test ends; Run must then return nil within 5s.
func runListener(t testing.TB, l *Listener, fn func(Event)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, fn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of cancel")
		}
	})
}

// nextEvent waits up to 5s for an event.
func nextEvent(t testing.TB, ch <-chan Event) Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return Event{}
	}
}

// expectEvents takes len(want) events and compares their types and original tuples, then
// checks that no further event arrives for a short while.
func expectEvents(t testing.TB, ch <-chan Event, want ...Event) []Event {
	t.Helper()
	var got []Event
	for range want {
		got = append(got, nextEvent(t, ch))
	}
	select {
	case e := <-ch:
		got = append(got, e)
	case <-time.After(200 * time.Millisecond):
	}
	brief := func(es []Event) []string {
		var s []string
		for _, e := range es {
			s = append(s, e.Type.String()+" "+protoName(e.Flow.Proto)+" "+e.Flow.Orig.String())
		}
		return s
	}
	if diff := cmp.Diff(brief(want), brief(got)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	return got
}
