package mirror

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var frameComparer = cmp.Options{cmp.AllowUnexported(frame{}, hello{}, digestMsg{}, digest{}), addrPortComparer}

func mustAppend(t testing.TB, fr *frame) []byte {
	t.Helper()
	b, err := appendFrame(nil, fr)
	if err != nil {
		t.Fatalf("encode %+v: %v", fr, err)
	}
	return b
}

func sampleFrames() map[string]frame {
	v4, v6 := testFlow(2), testFlow(3)
	mapped := Flow{
		Proto: 6,
		Orig:  Tuple{netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"), netip.MustParseAddrPort("[::ffff:10.0.0.2]:2")},
		Reply: Tuple{netip.MustParseAddrPort("[::ffff:10.0.0.3]:3"), netip.MustParseAddrPort("[::ffff:10.0.0.4]:4")},
	}
	return map[string]frame{
		"hello":         {typ: frameHello, hello: hello{version: protocolVersion, session: 0x0123456789abcdef, device: "bigip-a.example.com"}},
		"hello-empty":   {typ: frameHello, hello: hello{version: protocolVersion}},
		"hello-longest": {typ: frameHello, hello: hello{version: protocolVersion, device: strings.Repeat("é", 127) + "x"}},
		"upsert-ipv4":   {typ: frameUpsert, flow: v4},
		"upsert-ipv6":   {typ: frameUpsert, flow: v6},
		"upsert-mapped": {typ: frameUpsert, flow: mapped},
		"upsert-max": {typ: frameUpsert, flow: Flow{Proto: 255, TCPState: 255, Timeout: 1<<32 - 1, Mark: 1<<32 - 1,
			Orig:  Tuple{netip.MustParseAddrPort("[ffff::ffff]:65535"), netip.MustParseAddrPort("[::]:0")},
			Reply: Tuple{netip.MustParseAddrPort("[::1]:65535"), netip.MustParseAddrPort("[::2]:1")}}},
		"delete-ipv4":           {typ: frameDelete, flow: Flow{Proto: v4.Proto, Orig: v4.Orig}},
		"delete-ipv6":           {typ: frameDelete, flow: Flow{Proto: v6.Proto, Orig: v6.Orig}},
		"sync-begin":            {typ: frameSyncBegin, syncID: 7},
		"sync-end":              {typ: frameSyncEnd, syncID: 7, count: 1_000_000},
		"keepalive":             {typ: frameKeepalive},
		"digest":                {typ: frameDigest, digest: digestMsg{id: 3, d: digest{count: 1_000_000, sum: 0xfedcba9876543210}}},
		"digest-empty":          {typ: frameDigest, digest: digestMsg{id: 1}},
		"resync-request":        {typ: frameResyncRequest, reason: reasonDigest},
		"resync-request-table":  {typ: frameResyncRequest, reason: reasonTable},
		"resync-request-future": {typ: frameResyncRequest, reason: 200},
		"digest-request":        {typ: frameDigestRequest},
		"lag-probe":             {typ: frameLagProbe, probe: 1},
		"lag-ack":               {typ: frameLagAck, probe: 1<<32 - 1},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	wantLen := map[string]int{"upsert-ipv4": 38, "upsert-ipv6": 86, "delete-ipv4": 17, "delete-ipv6": 41, "keepalive": 3,
		"digest": 23, "resync-request": 4, "digest-request": 3, "lag-probe": 7, "lag-ack": 7}
	for name, fr := range sampleFrames() {
		t.Run(name, func(t *testing.T) {
			b := mustAppend(t, &fr)
			if n, ok := wantLen[name]; ok && len(b) != n {
				t.Errorf("encoded length %d, want %d", len(b), n)
			}
			// Two copies back to back: the decoder must find both and then a clean EOF.
			dec := newDecoder(bytes.NewReader(append(b, b...)), 0)
			for i := range 2 {
				var got frame
				if err := dec.next(&got); err != nil {
					t.Fatalf("decode %d: %v", i, err)
				}
				if diff := cmp.Diff(fr, got, frameComparer); diff != "" {
					t.Errorf("decode %d (-want +got):\n%s", i, diff)
				}
			}
			var fr2 frame
			if err := dec.next(&fr2); err != io.EOF {
				t.Errorf("after the last frame: %v, want io.EOF", err)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	valid := sampleFrames()
	enc := func(name string) []byte { fr := valid[name]; return mustAppend(t, &fr) }
	withLen := func(body []byte) []byte { return append([]byte{byte(len(body) >> 8), byte(len(body))}, body...) }
	patch := func(b []byte, i int, v byte) []byte { b = bytes.Clone(b); b[i] = v; return b }

	tests := []struct {
		name  string
		in    []byte
		want  error
		wantS string // substring, for errors without a sentinel
	}{
		{name: "zero length", in: []byte{0, 0, 6}, want: ErrMalformed},
		{name: "oversized length", in: append([]byte{0xff, 0xff}, make([]byte, 100)...), want: ErrMalformed},
		{name: "just over the cap", in: withLen(make([]byte, maxBodyLen+1)), want: ErrMalformed},
		{name: "unknown type", in: withLen([]byte{0x42}), want: ErrMalformed},
		{name: "type zero", in: withLen([]byte{0}), want: ErrMalformed},
		{name: "keepalive with payload", in: withLen([]byte{byte(frameKeepalive), 1}), want: ErrMalformed},
		{name: "bad magic", in: patch(enc("hello"), 3, 'X'), want: ErrMalformed},
		{name: "future version", in: patch(enc("hello"), 7, 2), want: ErrVersion},
		{name: "name length past the end", in: patch(enc("hello"), 16, 200), want: ErrMalformed},
		{name: "name not utf-8", in: patch(enc("hello"), 17, 0xff), want: ErrMalformed},
		{name: "family 5", in: patch(enc("upsert-ipv4"), 4, 5), want: ErrMalformed},
		{name: "ipv6 family on ipv4 payload", in: patch(enc("upsert-ipv4"), 4, familyV6), want: ErrMalformed},
		{name: "upsert length as delete", in: patch(enc("upsert-ipv4"), 2, byte(frameDelete)), want: ErrMalformed},
		{name: "delete length as upsert", in: patch(enc("delete-ipv6"), 2, byte(frameUpsert)), want: ErrMalformed},
		{name: "upsert with one byte more", in: withLen(append(enc("upsert-ipv4")[2:], 0)), want: ErrMalformed},
		{name: "upsert one byte short", in: withLen(enc("upsert-ipv6")[2 : 86-1]), want: ErrMalformed},
		{name: "flow without family", in: withLen([]byte{byte(frameUpsert), 6}), want: ErrMalformed},
		{name: "sync-end short", in: withLen(enc("sync-end")[2:10]), want: ErrMalformed},
		{name: "sync-begin long", in: withLen(append(enc("sync-begin")[2:], 1)), want: ErrMalformed},
		{name: "text", in: []byte("GET / HTTP/1.1\r\n\r\n"), want: ErrMalformed},
		{name: "digest short", in: withLen(enc("digest")[2 : 2+1+19]), want: ErrMalformed},
		{name: "digest long", in: withLen(append(enc("digest")[2:], 0)), want: ErrMalformed},
		{name: "resync-request without reason", in: withLen([]byte{byte(frameResyncRequest)}), want: ErrMalformed},
		{name: "resync-request long", in: withLen([]byte{byte(frameResyncRequest), 1, 2}), want: ErrMalformed},
		{name: "digest-request with payload", in: withLen([]byte{byte(frameDigestRequest), 0}), want: ErrMalformed},
		{name: "lag-probe without id", in: withLen([]byte{byte(frameLagProbe)}), want: ErrMalformed},
		{name: "lag-ack long", in: withLen([]byte{byte(frameLagAck), 1, 2, 3, 4, 5}), want: ErrMalformed},
		{name: "type twelve", in: withLen([]byte{12}), want: ErrMalformed},
	}
	// Every strict prefix of every valid frame is a truncated frame.
	for name := range valid {
		b := enc(name)
		for n := 1; n < len(b); n++ {
			tests = append(tests, struct {
				name  string
				in    []byte
				want  error
				wantS string
			}{name: name + " truncated", in: b[:n], want: io.ErrUnexpectedEOF})
		}
	}
	for _, tt := range tests {
		var fr frame
		err := newDecoder(bytes.NewReader(tt.in), 0).next(&fr)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: % x: got %v, want %v", tt.name, tt.in, err, tt.want)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	good := testFlow(2)
	mixed := good
	mixed.Reply.Dst = netip.MustParseAddrPort("[2001:db8::1]:80")
	invalid := good
	invalid.Orig.Src = netip.AddrPort{}
	for name, f := range map[string]Flow{"mixed families": mixed, "invalid address": invalid, "zero flow": {}} {
		if b, err := appendUpsert(nil, &f); !errors.Is(err, ErrInvalidFlow) || len(b) != 0 {
			t.Errorf("upsert %s: %d bytes, %v; want nothing and ErrInvalidFlow", name, len(b), err)
		}
	}
	if _, err := appendDelete(nil, Key{Orig: Tuple{Src: good.Orig.Src, Dst: netip.MustParseAddrPort("[::1]:1")}}); !errors.Is(err, ErrInvalidFlow) {
		t.Errorf("delete with mixed families: %v, want ErrInvalidFlow", err)
	}
	if _, err := appendHello(nil, hello{device: strings.Repeat("x", 256)}); err == nil {
		t.Error("hello with a 256-byte name: no error")
	}
	if _, err := appendHello(nil, hello{device: "\xff"}); err == nil {
		t.Error("hello with a non-UTF-8 name: no error")
	}
}

// randomFrame returns a random valid frame.
func randomFrame(r *rand.Rand) frame {
	addr := func(v6 bool) netip.AddrPort {
		var a netip.Addr
		if v6 {
			var b [16]byte
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			a = netip.AddrFrom16(b)
		} else {
			a = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		}
		return netip.AddrPortFrom(a, uint16(r.Uint32()))
	}
	v6 := r.IntN(2) == 0
	f := Flow{
		Proto: byte(r.Uint32()), TCPState: byte(r.Uint32()), Timeout: r.Uint32(), Mark: r.Uint32(),
		Orig: Tuple{addr(v6), addr(v6)}, Reply: Tuple{addr(v6), addr(v6)},
	}
	switch t := frameType(1 + r.IntN(11)); t {
	case frameHello:
		name := make([]byte, r.IntN(maxDeviceLen+1))
		for i := range name {
			name[i] = byte(' ' + r.IntN(95))
		}
		return frame{typ: frameHello, hello: hello{version: protocolVersion, session: r.Uint64(), device: string(name)}}
	case frameUpsert:
		return frame{typ: frameUpsert, flow: f}
	case frameDelete:
		return frame{typ: frameDelete, flow: Flow{Proto: f.Proto, Orig: f.Orig}}
	case frameSyncBegin:
		return frame{typ: frameSyncBegin, syncID: r.Uint32()}
	case frameSyncEnd:
		return frame{typ: frameSyncEnd, syncID: r.Uint32(), count: r.Uint64()}
	case frameDigest:
		return frame{typ: frameDigest, digest: digestMsg{id: r.Uint32(), d: digest{count: r.Uint64(), sum: r.Uint64()}}}
	case frameResyncRequest:
		return frame{typ: frameResyncRequest, reason: resyncReason(r.Uint32())}
	case frameDigestRequest:
		return frame{typ: frameDigestRequest}
	case frameLagProbe, frameLagAck:
		return frame{typ: t, probe: r.Uint32()}
	default:
		return frame{typ: frameKeepalive}
	}
}

// TestRoundTripProperty: any sequence of valid frames, encoded into one stream, decodes to the
// same sequence.
func TestRoundTripProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 200 {
		want := make([]frame, 1+r.IntN(100))
		var stream []byte
		for i := range want {
			want[i] = randomFrame(r)
			var err error
			if stream, err = appendFrame(stream, &want[i]); err != nil {
				t.Fatal(err)
			}
		}
		dec := newDecoder(bytes.NewReader(stream), 0)
		for i := range want {
			var got frame
			if err := dec.next(&got); err != nil {
				t.Fatalf("iteration %d, frame %d: %v", iter, i, err)
			}
			if diff := cmp.Diff(want[i], got, frameComparer); diff != "" {
				t.Fatalf("iteration %d, frame %d (-want +got):\n%s", iter, i, diff)
			}
		}
		var fr frame
		if err := dec.next(&fr); err != io.EOF {
			t.Fatalf("iteration %d: after the last frame: %v, want io.EOF", iter, err)
		}
	}
}

// TestPackedKey: a key packs and unpacks to itself, and two flows share a packed key exactly when
// they share a Key.
func TestPackedKey(t *testing.T) {
	seen := make(map[packedKey]Key)
	for i := range 1000 {
		f := testFlow(i)
		fam, err := flowFamily(&f)
		if err != nil {
			t.Fatal(err)
		}
		k := packKey(f.Proto, fam, f.Orig)
		if got := k.flow().Key(); got != f.Key() {
			t.Fatalf("unpacked %v, want %v", got, f.Key())
		}
		if other, ok := seen[k]; ok {
			t.Fatalf("%v and %v pack alike", other, f.Key())
		}
		seen[k] = f.Key()
	}
}

func TestCodecAllocs(t *testing.T) {
	f := testFlow(3)
	var buf [lenPrefix + maxBodyLen]byte
	var fr frame
	allocs := testing.AllocsPerRun(1000, func() {
		b, _ := appendUpsert(buf[:0], &f)
		_ = decodeBody(b[lenPrefix:], &fr)
	})
	if allocs != 0 {
		t.Errorf("encode+decode of an upsert: %v allocations, want 0", allocs)
	}
}

func fuzzSeeds(f *testing.F) {
	for _, fr := range sampleFrames() {
		f.Add(mustAppend(f, &fr))
	}
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff, 1})
}

// FuzzDecode: decoding one frame never panics, and a frame that decodes encodes back to exactly
// the bytes it was decoded from (the decoder accepts nothing the encoder would not write).
func FuzzDecode(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		dec := newDecoder(bytes.NewReader(in), 0)
		var fr frame
		if err := dec.next(&fr); err != nil {
			return
		}
		n := lenPrefix + (int(in[0])<<8 | int(in[1]))
		out, err := appendFrame(nil, &fr)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", fr, err)
		}
		if !bytes.Equal(out, in[:n]) {
			t.Fatalf("re-encoded\n% x\nwant\n% x", out, in[:n])
		}
	})
}

// FuzzDecodeStream: a stream of arbitrary bytes decodes into frames that re-encode to its
// prefix, then an error; never a panic, never more frames than bytes allow.
func FuzzDecodeStream(f *testing.F) {
	fuzzSeeds(f)
	var all []byte
	for _, fr := range sampleFrames() {
		all = append(all, mustAppend(f, &fr)...)
	}
	f.Add(all)
	f.Fuzz(func(t *testing.T, in []byte) {
		dec := newDecoder(bytes.NewReader(in), 0)
		var out []byte
		for frames := 0; ; frames++ {
			if frames > len(in)/3 {
				t.Fatalf("%d frames from %d bytes", frames, len(in))
			}
			var fr frame
			err := dec.next(&fr)
			if err != nil {
				if err == io.EOF && len(out) != len(in) {
					t.Fatalf("clean EOF after %d of %d bytes", len(out), len(in))
				}
				break
			}
			if out, err = appendFrame(out, &fr); err != nil {
				t.Fatalf("decoded %+v does not encode: %v", fr, err)
			}
		}
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("re-encoded frames are not a prefix of the input")
		}
	})
}

// TestHeldSet: IPv4 keys compact and expand to themselves, and the set keeps both families
// apart.
func TestHeldSet(t *testing.T) {
	h := newHeldSet()
	for i := range 1000 {
		f := testFlow(i)
		fam, _ := flowFamily(&f)
		k := packKey(f.Proto, fam, f.Orig)
		if fam == familyV4 {
			c := compactV4(&k)
			if got := c.expand(); got != k {
				t.Fatalf("%v: compacted and expanded to %v", k.flow().Orig, got.flow().Orig)
			}
		}
		h.set(&k, heldEntry{hash: uint64(i)})
	}
	if h.len() != 1000 || len(h.v4) != 500 {
		t.Fatalf("%d held, %d IPv4; want 1000, 500", h.len(), len(h.v4))
	}
	seen := 0
	h.each(func(k *packedKey, e heldEntry) bool {
		f := k.flow()
		if want := testFlow(int(e.hash)); f.Key() != want.Key() {
			t.Errorf("entry %d has key %v, want %v", e.hash, f.Key(), want.Key())
		}
		seen++
		return e.hash%2 == 0 // drop the IPv6 ones
	})
	if seen != 1000 || h.len() != 500 {
		t.Errorf("visited %d, %d left; want 1000, 500", seen, h.len())
	}
	k := packKey(6, familyV4, testFlow(4).Orig)
	if e, ok := h.remove(&k); !ok || e.hash != 4 {
		t.Errorf("remove: %v %v", e, ok)
	}
	if _, ok := h.get(&k); ok || h.len() != 499 {
		t.Errorf("still held after remove")
	}
	for i := range 2 { // testFlow alternates IPv4 and IPv6
		f := testFlow(i)
		fam, _ := flowFamily(&f)
		k := packKey(f.Proto, fam, f.Orig)
		want := heldEntry{hash: 0xdeadbeefcafef00d, epoch: 0xfffffffe, seen: 7}
		h.set(&k, want)
		if got, ok := h.get(&k); !ok || got != want {
			t.Errorf("family %d: entry %+v read back as %+v (ok %v)", fam, want, got, ok)
		}
	}
}
