package mirror

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"unicode/utf8"
)

// Protocol constants; see doc.go for the layout.
const (
	protocolVersion = 1
	magic           = "OAMR" // open appliance mirror

	lenPrefix    = 2   // bytes of the length prefix
	maxBodyLen   = 512 // cap on a frame's body (type byte + payload); the largest is a Hello
	maxDeviceLen = 255 // the Hello's name length is one byte

	helloFixed    = 4 + 1 + 8 + 1 // magic, version, session, name length
	syncBeginLen  = 4
	syncEndLen    = 4 + 8
	digestLen     = 4 + 8 + 8 // id, count, sum
	resyncReqLen  = 1         // reason
	digestReqLen  = 0
	lagProbeLen   = 4                           // id, in both directions
	backFrameSize = lenPrefix + 1 + lagProbeLen // the largest back-channel frame
)

// frameType is a frame's first body byte.
type frameType uint8

const (
	frameHello     frameType = 1
	frameUpsert    frameType = 2
	frameDelete    frameType = 3
	frameSyncBegin frameType = 4
	frameSyncEnd   frameType = 5
	frameKeepalive frameType = 6
	frameDigest    frameType = 7 // Sender to Receiver: anti-entropy digest
	// Back-channel frames, Receiver to Sender.
	frameResyncRequest frameType = 8
	frameDigestRequest frameType = 9
	// The lag probe: the Sender asks, the Receiver answers once every change before the
	// probe is in its kernel.
	frameLagProbe frameType = 10
	frameLagAck   frameType = 11
)

func (t frameType) String() string {
	switch t {
	case frameHello:
		return "hello"
	case frameUpsert:
		return "flow-upsert"
	case frameDelete:
		return "flow-delete"
	case frameSyncBegin:
		return "sync-begin"
	case frameSyncEnd:
		return "sync-end"
	case frameKeepalive:
		return "keepalive"
	case frameDigest:
		return "digest"
	case frameResyncRequest:
		return "resync-request"
	case frameDigestRequest:
		return "digest-request"
	case frameLagProbe:
		return "lag-probe"
	case frameLagAck:
		return "lag-ack"
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

// hello is the first frame on a connection.
type hello struct {
	version uint8
	session uint64
	device  string
}

// resyncReason says why a Receiver asks for a full sync. The decoder accepts any value, so
// that a newer Receiver can give a reason an older Sender does not know (it logs the number).
type resyncReason uint8

const (
	// reasonDigest: the Sender's digest and the Receiver's remembered set differ, twice running.
	reasonDigest resyncReason = 1
	// reasonTable: the standby's kernel table lacks mirrored entries, or holds them with
	// another reply tuple, at two kernel checks running.
	reasonTable resyncReason = 2
)

func (r resyncReason) String() string {
	switch r {
	case reasonDigest:
		return "digest mismatch"
	case reasonTable:
		return "table drift"
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// digestMsg is a Digest frame's payload.
type digestMsg struct {
	id uint32 // per connection, from 1
	d  digest
}

// frame is one decoded frame. A decoder reuses one frame value, so decoding allocates nothing
// (except a Hello's device name).
type frame struct {
	typ    frameType
	flow   Flow // upsert; a delete sets Proto and Orig only
	hello  hello
	syncID uint32 // sync-begin, sync-end
	count  uint64 // sync-end: the number of upserts between sync-begin and sync-end
	digest digestMsg
	reason resyncReason // resync-request
	probe  uint32       // lag-probe, lag-ack: the probe's id
}

// addrLen returns the address length for a family byte, 0 for an unknown family.
func addrLen(fam byte) int {
	switch fam {
	case familyV4:
		return 4
	case familyV6:
		return 16
	}
	return 0
}

// Payload lengths (after the type byte) of the flow frames.
func upsertLen(alen int) int { return 2 + 4*(alen+2) + 1 + 4 + 4 }
func deleteLen(alen int) int { return 2 + 2*(alen+2) }

func appendHeader(b []byte, t frameType, payload int) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(1+payload))
	return append(b, byte(t))
}

func appendAddrPort(b []byte, ap netip.AddrPort, fam byte) []byte {
	if fam == familyV4 {
		a := ap.Addr().As4()
		b = append(b, a[:]...)
	} else {
		a := ap.Addr().As16()
		b = append(b, a[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// appendUpsert appends a FlowUpsert frame; it fails (appending nothing) on an invalid flow.
func appendUpsert(b []byte, f *Flow) ([]byte, error) {
	fam, err := flowFamily(f)
	if err != nil {
		return b, err
	}
	b = appendHeader(b, frameUpsert, upsertLen(addrLen(fam)))
	b = append(b, f.Proto, fam)
	b = appendAddrPort(b, f.Orig.Src, fam)
	b = appendAddrPort(b, f.Orig.Dst, fam)
	b = appendAddrPort(b, f.Reply.Src, fam)
	b = appendAddrPort(b, f.Reply.Dst, fam)
	b = append(b, f.TCPState)
	b = binary.BigEndian.AppendUint32(b, f.Timeout)
	return binary.BigEndian.AppendUint32(b, f.Mark), nil
}

// appendDelete appends a FlowDelete frame for the flow's key; it fails (appending nothing) when
// the original tuple is invalid.
func appendDelete(b []byte, k Key) ([]byte, error) {
	fam, err := family(k.Orig.Src, k.Orig.Dst)
	if err != nil {
		return b, err
	}
	b = appendHeader(b, frameDelete, deleteLen(addrLen(fam)))
	b = append(b, k.Proto, fam)
	b = appendAddrPort(b, k.Orig.Src, fam)
	return appendAddrPort(b, k.Orig.Dst, fam), nil
}

// appendHello appends a Hello frame; it fails on a device name that is too long or not UTF-8.
func appendHello(b []byte, h hello) ([]byte, error) {
	if len(h.device) > maxDeviceLen || !utf8.ValidString(h.device) {
		return b, fmt.Errorf("device name %q: longer than %d bytes or not UTF-8", h.device, maxDeviceLen)
	}
	b = appendHeader(b, frameHello, helloFixed+len(h.device))
	b = append(b, magic...)
	b = append(b, h.version)
	b = binary.BigEndian.AppendUint64(b, h.session)
	b = append(b, byte(len(h.device)))
	return append(b, h.device...), nil
}

func appendSyncBegin(b []byte, id uint32) []byte {
	b = appendHeader(b, frameSyncBegin, syncBeginLen)
	return binary.BigEndian.AppendUint32(b, id)
}

func appendSyncEnd(b []byte, id uint32, count uint64) []byte {
	b = appendHeader(b, frameSyncEnd, syncEndLen)
	b = binary.BigEndian.AppendUint32(b, id)
	return binary.BigEndian.AppendUint64(b, count)
}

func appendKeepalive(b []byte) []byte { return appendHeader(b, frameKeepalive, 0) }

func appendDigest(b []byte, m digestMsg) []byte {
	b = appendHeader(b, frameDigest, digestLen)
	b = binary.BigEndian.AppendUint32(b, m.id)
	b = binary.BigEndian.AppendUint64(b, m.d.count)
	return binary.BigEndian.AppendUint64(b, m.d.sum)
}

func appendResyncRequest(b []byte, r resyncReason) []byte {
	b = appendHeader(b, frameResyncRequest, resyncReqLen)
	return append(b, byte(r))
}

func appendDigestRequest(b []byte) []byte { return appendHeader(b, frameDigestRequest, digestReqLen) }

// appendLagProbe appends a LagProbe (t frameLagProbe) or its answer (frameLagAck).
func appendLagProbe(b []byte, t frameType, id uint32) []byte {
	b = appendHeader(b, t, lagProbeLen)
	return binary.BigEndian.AppendUint32(b, id)
}

// appendFrame appends any frame; the tests use it to round-trip decoded frames.
func appendFrame(b []byte, fr *frame) ([]byte, error) {
	switch fr.typ {
	case frameHello:
		return appendHello(b, fr.hello)
	case frameUpsert:
		return appendUpsert(b, &fr.flow)
	case frameDelete:
		return appendDelete(b, fr.flow.Key())
	case frameSyncBegin:
		return appendSyncBegin(b, fr.syncID), nil
	case frameSyncEnd:
		return appendSyncEnd(b, fr.syncID, fr.count), nil
	case frameKeepalive:
		return appendKeepalive(b), nil
	case frameDigest:
		return appendDigest(b, fr.digest), nil
	case frameResyncRequest:
		return appendResyncRequest(b, fr.reason), nil
	case frameDigestRequest:
		return appendDigestRequest(b), nil
	case frameLagProbe, frameLagAck:
		return appendLagProbe(b, fr.typ, fr.probe), nil
	}
	return b, fmt.Errorf("%w: unknown type %d", ErrMalformed, fr.typ)
}

func malformed(t frameType, n int) error {
	return fmt.Errorf("%w: %v with a %d-byte payload", ErrMalformed, t, n)
}

// decodeBody decodes a frame body (type byte and payload, without the length prefix) into fr.
// It accepts exactly what the append functions produce, so that a decoded frame encodes back to
// the same bytes, and it never panics.
func decodeBody(body []byte, fr *frame) error {
	if len(body) == 0 {
		return fmt.Errorf("%w: empty frame", ErrMalformed)
	}
	t, p := frameType(body[0]), body[1:]
	fr.typ = t
	switch t {
	case frameHello:
		if len(p) < 5 || string(p[:4]) != magic {
			return fmt.Errorf("%w: hello without the %q magic", ErrMalformed, magic)
		}
		if p[4] != protocolVersion {
			return fmt.Errorf("%w: peer speaks version %d, we speak %d", ErrVersion, p[4], protocolVersion)
		}
		if len(p) < helloFixed || len(p) != helloFixed+int(p[helloFixed-1]) {
			return malformed(t, len(p))
		}
		name := p[helloFixed:]
		if !utf8.Valid(name) {
			return fmt.Errorf("%w: device name is not UTF-8", ErrMalformed)
		}
		fr.hello = hello{version: p[4], session: binary.BigEndian.Uint64(p[5:13]), device: string(name)}
	case frameUpsert, frameDelete:
		if len(p) < 2 {
			return malformed(t, len(p))
		}
		fam := p[1]
		alen := addrLen(fam)
		if alen == 0 {
			return fmt.Errorf("%w: %v with address family %d", ErrMalformed, t, fam)
		}
		want := deleteLen(alen)
		if t == frameUpsert {
			want = upsertLen(alen)
		}
		if len(p) != want {
			return malformed(t, len(p))
		}
		ep := alen + 2
		f := &fr.flow
		*f = Flow{Proto: p[0]}
		f.Orig.Src = getAddrPortN(p[2:], alen)
		f.Orig.Dst = getAddrPortN(p[2+ep:], alen)
		if t == frameUpsert {
			f.Reply.Src = getAddrPortN(p[2+2*ep:], alen)
			f.Reply.Dst = getAddrPortN(p[2+3*ep:], alen)
			rest := p[2+4*ep:]
			f.TCPState = rest[0]
			f.Timeout = binary.BigEndian.Uint32(rest[1:5])
			f.Mark = binary.BigEndian.Uint32(rest[5:9])
		}
	case frameSyncBegin:
		if len(p) != syncBeginLen {
			return malformed(t, len(p))
		}
		fr.syncID = binary.BigEndian.Uint32(p)
	case frameSyncEnd:
		if len(p) != syncEndLen {
			return malformed(t, len(p))
		}
		fr.syncID = binary.BigEndian.Uint32(p)
		fr.count = binary.BigEndian.Uint64(p[4:])
	case frameKeepalive, frameDigestRequest:
		if len(p) != 0 {
			return malformed(t, len(p))
		}
	case frameDigest:
		if len(p) != digestLen {
			return malformed(t, len(p))
		}
		fr.digest = digestMsg{
			id: binary.BigEndian.Uint32(p),
			d:  digest{count: binary.BigEndian.Uint64(p[4:]), sum: binary.BigEndian.Uint64(p[12:])},
		}
	case frameResyncRequest:
		if len(p) != resyncReqLen {
			return malformed(t, len(p))
		}
		fr.reason = resyncReason(p[0])
	case frameLagProbe, frameLagAck:
		if len(p) != lagProbeLen {
			return malformed(t, len(p))
		}
		fr.probe = binary.BigEndian.Uint32(p)
	default:
		return fmt.Errorf("%w: unknown frame type %d", ErrMalformed, uint8(t))
	}
	return nil
}

// getAddrPortN reads an address of alen bytes followed by a big-endian port.
func getAddrPortN(b []byte, alen int) netip.AddrPort {
	var a netip.Addr
	if alen == 4 {
		a = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		a = netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[alen:]))
}

// decoder reads frames from a stream. It is not safe for concurrent use.
type decoder struct {
	r *bufio.Reader // at least lenPrefix+maxBodyLen bytes of buffer
}

func newDecoder(r io.Reader, size int) *decoder {
	return &decoder{r: bufio.NewReaderSize(r, max(size, lenPrefix+maxBodyLen))}
}

// next decodes the next frame into fr. It returns io.EOF at a clean end of stream between frames,
// an error wrapping io.ErrUnexpectedEOF inside a frame and one wrapping ErrMalformed (or
// ErrVersion) for bytes that are not a frame. It reads in place from the bufio buffer: no copy,
// no allocation, and never more than lenPrefix+maxBodyLen bytes for one frame.
func (d *decoder) next(fr *frame) error {
	hdr, err := d.r.Peek(lenPrefix)
	if err != nil {
		if errors.Is(err, io.EOF) && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	n := int(binary.BigEndian.Uint16(hdr))
	if n == 0 || n > maxBodyLen {
		return fmt.Errorf("%w: frame length %d (allowed 1..%d)", ErrMalformed, n, maxBodyLen)
	}
	b, err := d.r.Peek(lenPrefix + n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %d-byte frame: %w", n, err)
	}
	if err := decodeBody(b[lenPrefix:], fr); err != nil {
		return err
	}
	_, _ = d.r.Discard(lenPrefix + n) // cannot fail: the bytes are buffered
	return nil
}

// frameBuffered reports whether a whole frame is buffered, so that next will not read from the
// stream (and so cannot block on it).
func (d *decoder) frameBuffered() bool {
	n := d.r.Buffered()
	if n < lenPrefix {
		return false
	}
	hdr, _ := d.r.Peek(lenPrefix) // buffered: no read
	return n >= lenPrefix+int(binary.BigEndian.Uint16(hdr))
}

// encoder writes frames to a buffered stream. It is not safe for concurrent use.
type encoder struct {
	w   *bufio.Writer
	buf [lenPrefix + maxBodyLen]byte // scratch: frames are built here, then copied to w
}

func (e *encoder) write(b []byte) error {
	_, err := e.w.Write(b)
	return err
}

// upsert writes a FlowUpsert; an invalid flow writes nothing and returns an error wrapping
// ErrInvalidFlow.
func (e *encoder) upsert(f *Flow) error {
	b, err := appendUpsert(e.buf[:0], f)
	if err != nil {
		return err
	}
	return e.write(b)
}

func (e *encoder) delete(k Key) error {
	b, err := appendDelete(e.buf[:0], k)
	if err != nil {
		return err
	}
	return e.write(b)
}

func (e *encoder) hello(h hello) error {
	b, err := appendHello(e.buf[:0], h)
	if err != nil {
		return err
	}
	return e.write(b)
}

func (e *encoder) syncBegin(id uint32) error { return e.write(appendSyncBegin(e.buf[:0], id)) }
func (e *encoder) syncEnd(id uint32, count uint64) error {
	return e.write(appendSyncEnd(e.buf[:0], id, count))
}
func (e *encoder) keepalive() error { return e.write(appendKeepalive(e.buf[:0])) }
func (e *encoder) digest(m digestMsg) error {
	return e.write(appendDigest(e.buf[:0], m))
}
func (e *encoder) lagProbe(id uint32) error {
	return e.write(appendLagProbe(e.buf[:0], frameLagProbe, id))
}
func (e *encoder) flush() error { return e.w.Flush() }
