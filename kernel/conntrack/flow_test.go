package conntrack

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

func TestFlowNAT(t *testing.T) {
	tests := []struct {
		name       string
		flow       Flow
		dnat, snat netip.AddrPort
		isD, isS   bool
		str        string
	}{{
		name: "dnat and snat",
		flow: Flow{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:5000", "10.0.0.10:3306"), Reply: tup("10.1.0.100:3306", "10.1.0.10:5000")},
		dnat: ap("10.1.0.100:3306"), isD: true,
		snat: ap("10.1.0.10:5000"), isS: true,
		str: "tcp 10.0.0.1:5000->10.0.0.10:3306 / 10.1.0.100:3306->10.1.0.10:5000",
	}, {
		name: "dnat only",
		flow: Flow{Proto: unix.IPPROTO_UDP, Orig: tup("10.0.0.1:5000", "10.0.0.10:53"), Reply: tup("10.1.0.100:53", "10.0.0.1:5000")},
		dnat: ap("10.1.0.100:53"), isD: true,
		snat: ap("10.0.0.1:5000"),
		str:  "udp 10.0.0.1:5000->10.0.0.10:53 / 10.1.0.100:53->10.0.0.1:5000",
	}, {
		name: "port translation only",
		flow: Flow{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:5000", "10.0.0.10:80"), Reply: tup("10.0.0.10:8080", "10.0.0.1:5000")},
		dnat: ap("10.0.0.10:8080"), isD: true,
		snat: ap("10.0.0.1:5000"),
		str:  "tcp 10.0.0.1:5000->10.0.0.10:80 / 10.0.0.10:8080->10.0.0.1:5000",
	}, {
		name: "snat only",
		flow: Flow{Proto: unix.IPPROTO_UDP, Orig: tup("10.1.0.100:6000", "192.0.2.1:53"), Reply: tup("192.0.2.1:53", "10.0.0.10:6000")},
		dnat: ap("192.0.2.1:53"),
		snat: ap("10.0.0.10:6000"), isS: true,
		str: "udp 10.1.0.100:6000->192.0.2.1:53 / 192.0.2.1:53->10.0.0.10:6000",
	}, {
		name: "no nat",
		flow: Flow{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:5000", "10.0.0.10:22"), Reply: tup("10.0.0.10:22", "10.0.0.1:5000")},
		dnat: ap("10.0.0.10:22"),
		snat: ap("10.0.0.1:5000"),
		str:  "tcp 10.0.0.1:5000->10.0.0.10:22 / 10.0.0.10:22->10.0.0.1:5000",
	}, {
		name: "no reply tuple",
		flow: Flow{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:5000", "10.0.0.10:22")},
		dnat: ap("10.0.0.10:22"),
		snat: ap("10.0.0.1:5000"),
		str:  "tcp 10.0.0.1:5000->10.0.0.10:22 / invalid AddrPort->invalid AddrPort",
	}, {
		name: "ipv6",
		flow: Flow{Proto: unix.IPPROTO_TCP, Orig: tup("[fd00::1]:5000", "[fd00::10]:443"), Reply: tup("[fd01::100]:8443", "[fd01::10]:5000")},
		dnat: ap("[fd01::100]:8443"), isD: true,
		snat: ap("[fd01::10]:5000"), isS: true,
		str: "tcp [fd00::1]:5000->[fd00::10]:443 / [fd01::100]:8443->[fd01::10]:5000",
	}, {
		name: "other protocol",
		flow: Flow{Proto: unix.IPPROTO_SCTP, Orig: tup("10.0.0.1:1", "10.0.0.2:2"), Reply: tup("10.0.0.2:2", "10.0.0.1:1")},
		dnat: ap("10.0.0.2:2"),
		snat: ap("10.0.0.1:1"),
		str:  "proto-132 10.0.0.1:1->10.0.0.2:2 / 10.0.0.2:2->10.0.0.1:1",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d, ok := tt.flow.DNAT(); d != tt.dnat || ok != tt.isD {
				t.Errorf("DNAT() = %v, %v; want %v, %v", d, ok, tt.dnat, tt.isD)
			}
			if s, ok := tt.flow.SNAT(); s != tt.snat || ok != tt.isS {
				t.Errorf("SNAT() = %v, %v; want %v, %v", s, ok, tt.snat, tt.isS)
			}
			if got := tt.flow.String(); got != tt.str {
				t.Errorf("String() = %q, want %q", got, tt.str)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	mapped := func(s string) netip.AddrPort {
		a := ap(s)
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr().As16()), a.Port())
	}
	got, err := Flow{
		Proto: unix.IPPROTO_UDP, TCPState: 3,
		Orig: Tuple{Src: mapped("10.0.0.1:1"), Dst: mapped("10.0.0.2:2")},
	}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	want := Flow{Proto: unix.IPPROTO_UDP, Orig: tup("10.0.0.1:1", "10.0.0.2:2"), Reply: tup("10.0.0.2:2", "10.0.0.1:1")}
	if got != want {
		t.Errorf("normalize = %v (state %d), want %v: unmapped, reply filled in, no TCP state", got, got.TCPState, want)
	}

	for _, f := range []Flow{
		{Proto: unix.IPPROTO_ICMP, Orig: tup("10.0.0.1:0", "10.0.0.2:0")},
		{Proto: unix.IPPROTO_TCP},
		{Proto: unix.IPPROTO_TCP, Orig: Tuple{Src: ap("10.0.0.1:1")}},
		{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:1", "[fd00::1]:2")},
		{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:1", "10.0.0.2:2"), Reply: tup("[fd00::1]:2", "10.0.0.1:1")},
		{Proto: unix.IPPROTO_TCP, Orig: tup("[fe80::1%eth0]:1", "[fe80::2]:2")},
	} {
		if _, err := f.normalize(); !errors.Is(err, ErrInvalidFlow) {
			t.Errorf("normalize(%v) = %v, want ErrInvalidFlow", f, err)
		}
	}
}

// TestMessages compares the messages built for the kernel with golden dumps of their
// attribute trees, and checks that the create message decodes back to the flow with a
// plain inverse reply tuple, as the kernel is meant to receive it.
func TestMessages(t *testing.T) {
	tcp := Flow{
		Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300, Mark: 7,
		Status: StatusAssured | StatusSeenReply | StatusSrcNAT | StatusConfirmed,
		Orig:   tup("10.0.0.1:40000", "10.0.0.10:3306"),
		Reply:  tup("10.1.0.100:3306", "10.1.0.10:40000"),
	}
	udp6 := Flow{
		Proto: unix.IPPROTO_UDP, Timeout: 0,
		Orig:  tup("[fd00::1]:5000", "[fd00::10]:53"),
		Reply: tup("[fd01::100]:5353", "[fd00::1]:5000"),
	}
	var b strings.Builder
	for _, c := range []struct {
		name  string
		build func() (netlink.Message, error)
	}{
		{"create " + tcp.String(), func() (netlink.Message, error) { return createMessage(tcp) }},
		{"create " + udp6.String(), func() (netlink.Message, error) { return createMessage(udp6) }},
		{"update " + tcp.String() + " status 0x10e", func() (netlink.Message, error) { return updateMessage(tcp, 0x10e) }},
		{"get " + udp6.String(), func() (netlink.Message, error) { return getMessage(udp6.Proto, udp6.Orig) }},
		{"delete " + tcp.String() + " id 42", func() (netlink.Message, error) { return deleteMessage(tcp.Proto, tcp.Orig, 42) }},
	} {
		m, err := c.build()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		h, attrs, err := netfilter.UnmarshalNetlink(m)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		fmt.Fprintf(&b, "%s\n  header type %d family %d flags %#x\n", c.name, h.MessageType, h.Family, uint16(m.Header.Flags))
		dumpAttrs(&b, attrs, "  ")
	}
	golden(t, "messages.golden", b.String())

	m, err := createMessage(tcp)
	if err != nil {
		t.Fatal(err)
	}
	ev, ok, err := decodeEvent(m)
	if err != nil || !ok {
		t.Fatalf("decodeEvent(create) = %v, %v", ok, err)
	}
	want := Event{Type: EventNew, Flow: Flow{
		Proto: tcp.Proto, TCPState: tcp.TCPState, Timeout: tcp.Timeout, Mark: tcp.Mark,
		Status: StatusAssured | StatusSeenReply | StatusConfirmed,
		Orig:   tcp.Orig, Reply: tcp.Orig.inverse(),
	}}
	if diff := cmp.Diff(want, ev, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("create message decoded (-want +got):\n%s", diff)
	}
}

func dumpAttrs(b *strings.Builder, attrs []netfilter.Attribute, indent string) {
	for _, a := range attrs {
		if a.Nested {
			fmt.Fprintf(b, "%s%d nested\n", indent, a.Type)
			dumpAttrs(b, a.Children, indent+"  ")
			continue
		}
		fmt.Fprintf(b, "%s%d % x\n", indent, a.Type, a.Data)
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

// FuzzDecode feeds arbitrary netlink messages to the decoders of kernel messages this
// package owns: they must not panic, what they accept must be a well-formed flow, and what
// ti-mo/conntrack's decoder (the reference, ref_test.go) accepts they must accept and
// decode alike.
func FuzzDecode(f *testing.F) {
	flows := []Flow{
		{Proto: unix.IPPROTO_TCP, TCPState: 3, Timeout: 300, Mark: 7, Status: StatusAssured,
			Orig: tup("10.0.0.1:40000", "10.0.0.10:3306"), Reply: tup("10.1.0.100:3306", "10.1.0.10:40000")},
		{Proto: unix.IPPROTO_UDP, Timeout: 30,
			Orig: tup("[fd00::1]:5000", "[fd00::10]:53"), Reply: tup("[fd01::100]:53", "[fd00::1]:5000")},
	}
	for _, fl := range flows {
		for _, build := range []func() (netlink.Message, error){
			func() (netlink.Message, error) { return createMessage(fl) },
			func() (netlink.Message, error) { return updateMessage(fl, 0) },
			func() (netlink.Message, error) { return deleteMessage(fl.Proto, fl.Orig, 1) },
		} {
			m, err := build()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data)
		}
		m := kernelEntry(f, fl, 1)
		f.Add(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data)
	}
	f.Add(uint16(0x100), uint16(0), []byte{2, 0, 0, 0})
	f.Fuzz(func(t *testing.T, typ, flags uint16, data []byte) {
		m := netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.HeaderFlags(flags)},
			Data:   data,
		}
		ev, ok, err := decodeEvent(m)
		if err == nil && ok {
			checkDecoded(t, ev.Flow)
			if ev.Type < EventNew || ev.Type > EventDestroy {
				t.Errorf("event type %v", ev.Type)
			}
		}
		if rev, rok, rerr := refDecodeEvent(m); rerr == nil && rok && (err != nil || !ok || ev != rev) {
			t.Errorf("decodeEvent = %+v, %v, %v; reference %+v", ev, ok, err, rev)
		}
		fl, ok, err := decodeFlow(m)
		if err == nil && ok {
			checkDecoded(t, fl)
		}
		if rfl, rok, rerr := refDecodeFlow(m); rerr == nil && rok && (err != nil || !ok || fl != rfl) {
			t.Errorf("decodeFlow = %+v, %v, %v; reference %+v", fl, ok, err, rfl)
		}
		// The same bytes as a datagram of several netlink messages.
		if msgs, err := parseMessages(data); err == nil {
			for _, m := range msgs {
				_, _, _ = decodeEvent(m)
			}
		}
	})
}

func checkDecoded(t *testing.T, f Flow) {
	t.Helper()
	if f.Proto != unix.IPPROTO_TCP && f.Proto != unix.IPPROTO_UDP {
		t.Errorf("decoded protocol %d", f.Proto)
	}
	is4 := f.Orig.Src.Addr().Is4()
	for _, a := range []netip.AddrPort{f.Orig.Src, f.Orig.Dst, f.Reply.Src, f.Reply.Dst} {
		if !a.Addr().IsValid() || a.Addr().Is4() != is4 {
			t.Errorf("decoded flow %v has a bad address %v", f, a)
		}
	}
	if f.Proto != unix.IPPROTO_TCP && f.TCPState != 0 {
		t.Errorf("decoded %v with TCP state %d", f, f.TCPState)
	}
	_ = f.String()
	_, _ = f.DNAT()
	_, _ = f.SNAT()
}
