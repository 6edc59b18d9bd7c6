package failover

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHeartbeatRoundTrip(t *testing.T) {
	tests := []heartbeat{
		{Name: "lb1", State: StateStandby, BootID: 1, Seq: 1},
		{Name: "lb2", State: StateActive, Yield: true, BootID: 0xdeadbeefcafef00d, Seq: 1 << 63, Payload: []byte("sha256:0123")},
		{Name: "bigip1.example.com", State: StateOffline, Payload: bytes.Repeat([]byte{0}, maxPayloadLen)},
		{Name: strings.Repeat("x", maxNameLen), State: StateStandby},
	}
	for _, want := range tests {
		b, err := want.AppendBinary(nil)
		if err != nil {
			t.Fatalf("AppendBinary(%+v): %v", want, err)
		}
		if wantLen := hbHeaderLen + len(want.Name) + len(want.Payload); len(b) != wantLen {
			t.Errorf("%s: %d bytes, want %d", want.Name, len(b), wantLen)
		}
		got, err := decodeHeartbeat(b)
		if err != nil {
			t.Fatalf("decode(%x): %v", b, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
}

// TestHeartbeatWire pins the byte layout, which the peer (maybe another version) reads.
func TestHeartbeatWire(t *testing.T) {
	hb := heartbeat{Name: "lb1", State: StateActive, Yield: true, BootID: 0x0102030405060708, Seq: 0x1112131415161718, Payload: []byte{0xaa, 0xbb}}
	got, err := hb.AppendBinary([]byte{0xff}) // appends
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0xff,
		'O', 'A', 'H', 'B', 1, 2, 1, 3,
		1, 2, 3, 4, 5, 6, 7, 8,
		0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
		0, 2,
		'l', 'b', '1',
		0xaa, 0xbb,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("wire (-want +got):\n%s", diff)
	}
}

func TestHeartbeatEncodeErrors(t *testing.T) {
	for _, hb := range []heartbeat{
		{Name: "", State: StateStandby},
		{Name: "lb 1", State: StateStandby},
		{Name: "lb\x001", State: StateStandby},
		{Name: "lé", State: StateStandby},
		{Name: strings.Repeat("x", maxNameLen+1), State: StateStandby},
		{Name: "lb1", State: 3},
		{Name: "lb1", State: StateStandby, Payload: make([]byte, maxPayloadLen+1)},
	} {
		if b, err := hb.AppendBinary(nil); err == nil {
			t.Errorf("AppendBinary(%q, state %d, %d-byte payload) = %x, want an error", hb.Name, hb.State, len(hb.Payload), b)
		}
	}
}

func TestDecodeHeartbeatRejects(t *testing.T) {
	valid, err := heartbeat{Name: "lb1", State: StateStandby, BootID: 7, Seq: 9, Payload: []byte("xy")}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	tests := map[string][]byte{
		"empty":            nil,
		"short header":     valid[:hbHeaderLen-1],
		"magic":            edit(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version 0":        edit(func(b []byte) []byte { b[4] = 0; return b }),
		"version 2":        edit(func(b []byte) []byte { b[4] = 2; return b }),
		"state 3":          edit(func(b []byte) []byte { b[5] = 3; return b }),
		"unknown flag":     edit(func(b []byte) []byte { b[6] = 2; return b }),
		"empty name":       edit(func(b []byte) []byte { b[7] = 0; return b }),
		"name too long":    edit(func(b []byte) []byte { b[7] = maxNameLen + 1; return b }),
		"name with space":  edit(func(b []byte) []byte { b[hbHeaderLen+1] = ' '; return b }),
		"name with NUL":    edit(func(b []byte) []byte { b[hbHeaderLen] = 0; return b }),
		"payload too long": edit(func(b []byte) []byte { b[24], b[25] = 0x04, 0x01; return b }),
		"truncated":        valid[:len(valid)-1],
		"trailing byte":    append(bytes.Clone(valid), 0),
		"text":             []byte("GET / HTTP/1.1\r\nHost: lb1\r\n\r\n"),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			hb, err := decodeHeartbeat(b)
			if !errors.Is(err, ErrBadHeartbeat) {
				t.Errorf("decode(%x) = %+v, %v; want an error wrapping ErrBadHeartbeat", b, hb, err)
			}
		})
	}
}

func TestDecodeHeartbeatDoesNotAlias(t *testing.T) {
	b, _ := heartbeat{Name: "lb1", State: StateActive, Payload: []byte("digest")}.AppendBinary(nil)
	hb, err := decodeHeartbeat(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if hb.Name != "lb1" || string(hb.Payload) != "digest" {
		t.Errorf("decoded heartbeat changed with its buffer: %+v", hb)
	}
}

// FuzzDecodeHeartbeat: the decoder never panics, accepts only what the encoder writes
// (a decoded datagram encodes back to the same bytes), and gives valid fields.
func FuzzDecodeHeartbeat(f *testing.F) {
	for _, hb := range []heartbeat{
		{Name: "lb1", State: StateStandby, BootID: 1, Seq: 1},
		{Name: "lb2", State: StateActive, Yield: true, BootID: 42, Seq: 1000, Payload: []byte("sha256:abcdef")},
		{Name: "x", State: StateOffline},
	} {
		b, err := hb.AppendBinary(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte("OAHB"))
	f.Add([]byte("OAHB\x01\x02\x01\x40"))
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, err := decodeHeartbeat(b)
		if err != nil {
			if !errors.Is(err, ErrBadHeartbeat) {
				t.Fatalf("error %v does not wrap ErrBadHeartbeat", err)
			}
			return
		}
		if !hb.State.valid() || validName(hb.Name) != nil || len(hb.Payload) > maxPayloadLen {
			t.Fatalf("decoded invalid fields: %+v", hb)
		}
		again, err := hb.AppendBinary(nil)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", hb, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoded %x, decoded from %x", again, b)
		}
	})
}
