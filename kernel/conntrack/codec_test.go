package conntrack

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// codecFlows covers the shapes of flows the appliance injects: both families, both
// protocols, DNAT and SNAT alone and together, no NAT, status bits and marks.
var codecFlows = []Flow{
	{Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300, Mark: 7,
		Status: StatusAssured | StatusSeenReply | StatusSrcNAT,
		Orig:   tup("10.0.0.1:40000", "10.0.0.10:3306"), Reply: tup("10.1.0.100:3306", "10.1.0.10:40000")},
	{Proto: unix.IPPROTO_TCP, TCPState: TCPStateSynRecv, Timeout: 0,
		Orig: tup("10.0.0.2:1", "10.0.0.10:80"), Reply: tup("10.1.0.100:8080", "10.0.0.2:1")},
	{Proto: unix.IPPROTO_UDP, Timeout: 30, Mark: 0xffffffff,
		Orig: tup("10.1.0.100:6000", "192.0.2.1:53"), Reply: tup("192.0.2.1:53", "10.0.0.10:6000")},
	{Proto: unix.IPPROTO_TCP, TCPState: TCPStateTimeWait, Timeout: 120,
		Orig: tup("10.0.0.4:65535", "10.1.0.100:22"), Reply: tup("10.1.0.100:22", "10.0.0.4:65535")},
	{Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 432000, Status: StatusSeenReply,
		Orig: tup("[fd00::1]:40000", "[fd00::10]:443"), Reply: tup("[fd01::100]:8443", "[fd01::10]:40000")},
	{Proto: unix.IPPROTO_UDP, Timeout: 1,
		Orig: tup("[fd00::1]:5000", "[fd00::10]:53"), Reply: tup("[fd01::100]:5353", "[fd00::1]:5000")},
}

// TestEncoderMatches proves that the encoder writes, byte for byte, the messages that
// ti-mo/netfilter's attribute trees gave (ref_test.go), and several in one buffer.
func TestEncoderMatches(t *testing.T) {
	var all encoder
	var want []byte
	seq := uint32(1)
	for _, f := range codecFlows {
		f, err := f.normalize()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name string
			ref  func() (netlink.Message, error)
			enc  func(e *encoder, seq uint32)
		}{
			{"create", func() (netlink.Message, error) { return refCreateMessage(f) },
				func(e *encoder, seq uint32) { appendCreate(e, f, seq) }},
			{"update", func() (netlink.Message, error) { return refUpdateMessage(f, 0) },
				func(e *encoder, seq uint32) { appendUpdate(e, f, 0, seq) }},
			{"update with status", func() (netlink.Message, error) { return refUpdateMessage(f, 0x10e) },
				func(e *encoder, seq uint32) { appendUpdate(e, f, 0x10e, seq) }},
			{"get", func() (netlink.Message, error) { return refGetMessage(f.Proto, f.Orig) },
				func(e *encoder, seq uint32) { appendGet(e, f.Proto, f.Orig, seq) }},
			{"delete", func() (netlink.Message, error) { return refDeleteMessage(f.Proto, f.Orig, 0) },
				func(e *encoder, seq uint32) { appendDelete(e, f.Proto, f.Orig, 0, seq) }},
			{"delete by id", func() (netlink.Message, error) { return refDeleteMessage(f.Proto, f.Orig, 42) },
				func(e *encoder, seq uint32) { appendDelete(e, f.Proto, f.Orig, 42, seq) }},
		} {
			m, err := c.ref()
			if err != nil {
				t.Fatal(err)
			}
			m.Header.Sequence = seq
			m.Header.Length = uint32(nlmsgHeaderLen + len(m.Data))
			b, err := m.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			// In a buffer whose spare capacity holds old bytes, as a reused one does.
			e := encoder{b: bytes.Repeat([]byte{0xff}, 1024)[:0]}
			c.enc(&e, seq)
			if !bytes.Equal(e.b, b) {
				t.Errorf("%s %v:\n got % x\nwant % x", c.name, f, e.b, b)
			}
			c.enc(&all, seq)
			want = append(want, b...)
			seq++
		}
	}
	if !bytes.Equal(all.b, want) {
		t.Errorf("messages appended to one buffer differ from the messages one by one")
	}
	// And the datagram splits back into the same messages.
	msgs, err := parseMessages(all.b)
	if err != nil || len(msgs) != int(seq-1) {
		t.Fatalf("parseMessages = %d messages, %v; want %d", len(msgs), err, seq-1)
	}
	for i, m := range msgs {
		if m.Header.Sequence != uint32(i+1) {
			t.Errorf("message %d has sequence %d", i, m.Header.Sequence)
		}
	}
}

// kernelEntry builds an entry as the kernel sends it in a dump, a get answer or an event
// (ctnetlink_fill_info): tuples, status, timeout, protoinfo with window scales and flags,
// mark, counters, use, id, zone and a timestamp. msgType is IPCTNL_MSG_CT_NEW or _DELETE.
func kernelEntry(t testing.TB, f Flow, msgType uint8) netlink.Message {
	t.Helper()
	attrs := []netfilter.Attribute{
		refTupleAttr(ctaTupleOrig, f.Proto, f.Orig),
		refTupleAttr(ctaTupleReply, f.Proto, f.Reply),
		{Type: ctaStatus, Data: u32(f.Status)},
		{Type: ctaTimeout, Data: u32(f.Timeout)},
		{Type: ctaMark, Data: u32(f.Mark)},
		{Type: ctaCountersOrig, Nested: true, Children: []netfilter.Attribute{
			{Type: 1, Data: netfilter.Uint64Bytes(10)}, {Type: 2, Data: netfilter.Uint64Bytes(1000)},
		}},
		{Type: ctaUse, Data: u32(1)},
		{Type: ctaID, Data: u32(f.ID)},
		{Type: ctaZone, Data: u16(0)},
		{Type: ctaTimestamp, Nested: true, Children: []netfilter.Attribute{
			{Type: 1, Data: netfilter.Uint64Bytes(1 << 40)},
		}},
	}
	if f.Proto == unix.IPPROTO_TCP {
		attrs = append(attrs, netfilter.Attribute{Type: ctaProtoInfo, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoInfoTCP, Nested: true, Children: []netfilter.Attribute{
				{Type: ctaProtoInfoTCPState, Data: []byte{f.TCPState}},
				{Type: ctaProtoInfoTCPWScaleOrig, Data: []byte{7}},
				{Type: ctaProtoInfoTCPWScaleReply, Data: []byte{7}},
				{Type: ctaProtoInfoTCPFlagsOriginal, Data: []byte{0x08, 0}},
				{Type: ctaProtoInfoTCPFlagsReply, Data: []byte{0x08, 0}},
			}},
		}})
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: netfilter.MessageType(msgType),
		Family:      family(f.Orig),
		Flags:       netlink.Create | netlink.Excl,
	}, attrs)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.PID = 4242
	return m
}

// TestDecodeMatches compares the decoder with ti-mo/conntrack's on entries as the kernel
// writes them, and on entries it leaves out or refuses.
func TestDecodeMatches(t *testing.T) {
	var msgs []netlink.Message
	for i, f := range codecFlows {
		f.ID = uint32(i + 1)
		msgs = append(msgs, kernelEntry(t, f, msgCTNew), kernelEntry(t, f, msgCTDelete))
	}
	// Left out: another protocol; tuples of two families.
	sctp := codecFlows[0]
	sctp.Proto = unix.IPPROTO_SCTP
	mixed := codecFlows[0]
	mixed.Reply = codecFlows[4].Reply
	msgs = append(msgs, kernelEntry(t, sctp, msgCTNew), kernelEntry(t, mixed, msgCTNew))
	// Refused: a nested attribute without its flag; a truncated attribute.
	bad := kernelEntry(t, codecFlows[0], msgCTNew)
	bad.Data = append([]byte(nil), bad.Data...)
	bad.Data[nfgenHeaderLen+3] &^= 0x80 // CTA_TUPLE_ORIG without NLA_F_NESTED
	cut := kernelEntry(t, codecFlows[0], msgCTNew)
	cut.Data = cut.Data[:len(cut.Data)-3]
	msgs = append(msgs, bad, cut)

	for i, m := range msgs {
		fl, ok, err := decodeFlow(m)
		rfl, rok, rerr := refDecodeFlow(m)
		if ok != rok || (err == nil) != (rerr == nil) || fl != rfl {
			t.Errorf("message %d: decodeFlow = %v, %v, %v; reference %v, %v, %v", i, fl, ok, err, rfl, rok, rerr)
		}
		ev, ok, err := decodeEvent(m)
		rev, rok, rerr := refDecodeEvent(m)
		if ok != rok || (err == nil) != (rerr == nil) || ev != rev {
			t.Errorf("message %d: decodeEvent = %+v, %v, %v; reference %+v, %v, %v", i, ev, ok, err, rev, rok, rerr)
		}
	}
	for i, f := range codecFlows[:2] {
		f.ID = uint32(i + 1)
		got, ok, err := decodeFlow(kernelEntry(t, f, msgCTNew))
		if err != nil || !ok || got != f {
			t.Errorf("decodeFlow = %v, %v, %v; want %v", got, ok, err, f)
		}
	}
}

// TestDecodeAllocs proves that decoding an entry allocates nothing: Dump decodes every
// entry of the table.
func TestDecodeAllocs(t *testing.T) {
	m := kernelEntry(t, codecFlows[4], msgCTNew)
	if n := testing.AllocsPerRun(100, func() { _, _, _ = decodeFlowData(m.Data) }); n != 0 {
		t.Errorf("decodeFlowData allocates %v times per entry", n)
	}
	var e encoder
	f, _ := codecFlows[4].normalize()
	appendCreate(&e, f, 1)
	if n := testing.AllocsPerRun(100, func() { e.reset(); appendCreate(&e, f, 1) }); n != 0 {
		t.Errorf("appendCreate allocates %v times per flow", n)
	}
}

// TestBatchStep drives InjectBatch's per-flow steps with the answers the kernel can give,
// those that the namespace tests cannot provoke included: EAGAIN on create,
// dropped answers, a full table, and entries that come and go between two steps.
func TestBatchStep(t *testing.T) {
	f, _ := codecFlows[0].normalize()
	same := f
	same.ID, same.Status = 9, StatusConfirmed|StatusAssured|StatusSeenReply
	other := same
	other.Reply.Src = ap("10.1.0.101:3306")
	ans := func(kind reqKind, errno unix.Errno) batchReq {
		return batchReq{kind: kind, answered: true, errno: errno}
	}
	got := func(fl Flow) batchReq { return batchReq{kind: reqGet, answered: true, found: true, flow: fl, ok: true} }
	lost := func(kind reqKind) batchReq { return batchReq{kind: kind, errno: errLostAnswer} }

	type round struct {
		answers []batchReq
		want    batchOp
	}
	tests := []struct {
		name    string
		first   batchOp
		rounds  []round
		wantErr error // errors.Is; nil for success
		existed bool
	}{{
		name: "created", first: opCreate,
		rounds: []round{{[]batchReq{ans(reqCreate, 0)}, opDone}},
	}, {
		name: "eagain then created", first: opCreate,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opCreate},
			{[]batchReq{ans(reqCreate, 0)}, opDone},
		},
	}, {
		name: "table full", first: opCreate,
		rounds:  []round{{[]batchReq{ans(reqCreate, unix.ENOMEM)}, opDone}},
		wantErr: ErrTableFull,
	}, {
		name: "eagain until it gives up", first: opCreate,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EAGAIN)}, opDone},
		},
		wantErr: unix.EAGAIN,
	}, {
		name: "exists with the same binding", first: opCreate, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(same)}, opUpdate},
			{[]batchReq{ans(reqUpdate, 0)}, opDone},
		},
	}, {
		name: "exists with another binding", first: opCreate, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(other)}, opReplace},
			{[]batchReq{ans(reqDelete, 0), ans(reqCreate, 0)}, opDone},
		},
	}, {
		name: "expires between get and update", first: opCreate, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(same)}, opUpdate},
			{[]batchReq{ans(reqUpdate, unix.ENOENT)}, opCreate},
			{[]batchReq{ans(reqCreate, 0)}, opDone},
		},
	}, {
		name: "reply tuple held by another entry", first: opCreate, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{ans(reqGet, unix.ENOENT)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{ans(reqGet, unix.ENOENT)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{ans(reqGet, unix.ENOENT)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{ans(reqGet, unix.ENOENT)}, opDone},
		},
		wantErr: unix.EEXIST,
	}, {
		name: "replaced by packets again and again", first: opCreate, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(other)}, opReplace},
			{[]batchReq{ans(reqDelete, 0), ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(other)}, opReplace},
			{[]batchReq{ans(reqDelete, 0), ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(other)}, opReplace},
			{[]batchReq{ans(reqDelete, 0), ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(other)}, opDelete},
			{[]batchReq{ans(reqDelete, 0)}, opDone},
		},
		wantErr: unix.EEXIST,
	}, {
		name: "answers dropped, then done", first: opCreate, existed: true,
		rounds: []round{
			{[]batchReq{lost(reqCreate)}, opCreate},
			{[]batchReq{lost(reqCreate)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{lost(reqGet)}, opGet},
			{[]batchReq{got(same)}, opUpdate},
			{[]batchReq{ans(reqUpdate, 0)}, opDone},
		},
	}, {
		name: "probe finds the same binding", first: opProbe, existed: true,
		rounds: []round{{[]batchReq{ans(reqProbe, 0), got(same)}, opDone}},
	}, {
		name: "probe finds a status to add", first: opProbe, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqProbe, 0), got(Flow{Proto: same.Proto, Orig: same.Orig, Reply: same.Reply, ID: 9})}, opUpdate},
			{[]batchReq{ans(reqUpdate, 0)}, opDone},
		},
	}, {
		name: "probe finds another binding", first: opProbe, existed: true,
		rounds: []round{
			{[]batchReq{ans(reqProbe, 0), got(other)}, opReplace},
			{[]batchReq{ans(reqDelete, 0), ans(reqCreate, 0)}, opDone},
		},
	}, {
		name: "probe finds nothing", first: opProbe,
		rounds: []round{
			{[]batchReq{ans(reqProbe, unix.ENOENT), ans(reqGet, unix.ENOENT)}, opCreate},
			{[]batchReq{ans(reqCreate, 0)}, opDone},
		},
	}, {
		name: "kernel refuses the update", first: opProbe, existed: false,
		rounds: []round{
			{[]batchReq{ans(reqProbe, unix.EINVAL), got(same)}, opCreate},
			{[]batchReq{ans(reqCreate, unix.EEXIST)}, opGet},
			{[]batchReq{got(same)}, opUpdate},
			{[]batchReq{ans(reqUpdate, unix.EINVAL)}, opDone},
		},
		wantErr: unix.EINVAL,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			it := batchItem{f: f, want: f.natReply(), op: tt.first}
			if tt.first == opCreate {
				it.creates = 1
			}
			for i, r := range tt.rounds {
				it.step(r.answers)
				if it.op != r.want {
					t.Fatalf("round %d: next step %d, want %d (err %v)", i, it.op, r.want, it.err)
				}
			}
			if (it.err == nil) != (tt.wantErr == nil) || (tt.wantErr != nil && !errors.Is(it.err, tt.wantErr)) {
				t.Errorf("err = %v, want %v", it.err, tt.wantErr)
			}
			if it.existed != tt.existed {
				t.Errorf("existed = %v, want %v", it.existed, tt.existed)
			}
		})
	}

	// Answers that keep being dropped end in ENOBUFS.
	it := batchItem{f: f, want: f.natReply(), op: opCreate, creates: 1}
	for range lostAttempts {
		it.step([]batchReq{lost(reqCreate)})
	}
	if it.op != opDone || !errors.Is(it.err, unix.ENOBUFS) {
		t.Errorf("after %d dropped answers: step %d, err %v; want done with ENOBUFS", lostAttempts, it.op, it.err)
	}
}
