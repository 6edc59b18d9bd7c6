package mirror

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestXXH64: the reference values of XXH64 with seed 0 (xxhsum -H1), across the short-input
// path and the 32-byte stripes; both ends of a pair must agree on every bit.
func TestXXH64(t *testing.T) {
	for in, want := range map[string]uint64{
		"":    0xef46db3751d8e999,
		"a":   0xd24ec4f1a98c6e5b,
		"abc": 0x44bc2cf5ad770999,
		"Nobody inspects the spammish repetition": 0xfbcea83c8a378bf1,
	} {
		if got := xxh64([]byte(in)); got != want {
			t.Errorf("xxh64(%q) = %#x, want %#x", in, got, want)
		}
	}
}

// TestFlowHashFields: every field of the key and the reply tuple changes a flow's hash, and
// state, timeout and mark do not.
func TestFlowHashFields(t *testing.T) {
	h := func(f Flow) uint64 {
		fam, err := flowFamily(&f)
		if err != nil {
			t.Fatal(err)
		}
		k := packKey(f.Proto, fam, f.Orig)
		return flowHash(&k, f.Reply)
	}
	for _, base := range []Flow{testFlow(2), testFlow(3)} {
		h0 := h(base)
		bump := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Next(), ap.Port()) }
		port := func(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr(), ap.Port()^1) }
		changed := map[string]func(*Flow){
			"proto":            func(f *Flow) { f.Proto = 132 },
			"orig src addr":    func(f *Flow) { f.Orig.Src = bump(f.Orig.Src) },
			"orig src port":    func(f *Flow) { f.Orig.Src = port(f.Orig.Src) },
			"orig dst addr":    func(f *Flow) { f.Orig.Dst = bump(f.Orig.Dst) },
			"orig dst port":    func(f *Flow) { f.Orig.Dst = port(f.Orig.Dst) },
			"reply src addr":   func(f *Flow) { f.Reply.Src = bump(f.Reply.Src) },
			"reply src port":   func(f *Flow) { f.Reply.Src = port(f.Reply.Src) },
			"reply dst addr":   func(f *Flow) { f.Reply.Dst = bump(f.Reply.Dst) },
			"reply dst port":   func(f *Flow) { f.Reply.Dst = port(f.Reply.Dst) },
			"reply swapped":    func(f *Flow) { f.Reply.Src, f.Reply.Dst = f.Reply.Dst, f.Reply.Src },
			"orig/reply moved": func(f *Flow) { f.Orig, f.Reply = f.Reply, f.Orig },
		}
		for name, change := range changed {
			f := base
			change(&f)
			if h(f) == h0 {
				t.Errorf("%v: changing the %s leaves the hash", base.Orig, name)
			}
		}
		f := base
		f.TCPState, f.Timeout, f.Mark = f.TCPState+1, f.Timeout+100, f.Mark^0xff
		if h(f) != h0 {
			t.Errorf("%v: state, timeout or mark change the hash", base.Orig)
		}
	}
	// An IPv4 flow and the same flow in IPv4-mapped IPv6 addresses are different flows.
	v4 := testFlow(2)
	m := v4
	for _, ap := range []*netip.AddrPort{&m.Orig.Src, &m.Orig.Dst, &m.Reply.Src, &m.Reply.Dst} {
		*ap = netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	if h(v4) == h(m) {
		t.Error("IPv4 and IPv4-mapped IPv6 hash alike")
	}
}

// TestDigestOrderIndependent: a set's digest does not depend on the order of its flows, and
// adding then removing a flow gives the digest back.
func TestDigestOrderIndependent(t *testing.T) {
	set := flows(0, 500)
	want := digestOf(set)
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		rnd.Shuffle(len(set), func(i, j int) { set[i], set[j] = set[j], set[i] })
		if got := digestOf(set); got != want {
			t.Fatalf("shuffled digest %+v, want %+v", got, want)
		}
	}
	d := want
	extra := testFlow(9999)
	one := digestOf([]Flow{extra})
	d.add(one.sum)
	if d == want || d.count != want.count+1 {
		t.Errorf("adding a flow: %+v from %+v", d, want)
	}
	d.remove(one.sum)
	if d != want {
		t.Errorf("add then remove: %+v, want %+v", d, want)
	}
}

// TestDigestSensitive: a digest changes when one flow is missing, added, counted twice, or
// has another reply tuple; and two different sets of the same size differ.
func TestDigestSensitive(t *testing.T) {
	set := flows(0, 1000)
	want := digestOf(set)
	corrupt := append([]Flow(nil), set...)
	corrupt[500].Reply.Dst = netip.AddrPortFrom(corrupt[500].Reply.Dst.Addr(), 1)
	cases := map[string][]Flow{
		"one missing":       set[1:],
		"one more":          append(append([]Flow(nil), set...), testFlow(1000)),
		"one twice":         append(append([]Flow(nil), set...), set[7]),
		"one reply changed": corrupt,
		"another set":       flows(1, 1001),
		"empty":             nil,
	}
	for name, s := range cases {
		if got := digestOf(s); got == want || got.sum == want.sum {
			t.Errorf("%s: digest %+v equals the set's %+v", name, got, want)
		}
	}
	// Two flows swapping their reply tuples (same count, same multiset of tuples) still differ.
	swapped := append([]Flow(nil), set...)
	swapped[0].Reply, swapped[2].Reply = swapped[2].Reply, swapped[0].Reply
	if digestOf(swapped) == want {
		t.Error("swapping two reply tuples leaves the digest")
	}
}

func BenchmarkFlowHash(b *testing.B) {
	f := testFlow(3)
	fam, _ := flowFamily(&f)
	k := packKey(f.Proto, fam, f.Orig)
	var sink uint64
	for b.Loop() {
		sink += flowHash(&k, f.Reply)
	}
	_ = sink
}
