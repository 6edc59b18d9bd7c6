package failover

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The heartbeat wire format; see the package documentation.
const (
	hbMagic         = "OAHB"
	hbVersion       = 1
	hbHeaderLen     = 26
	maxNameLen      = 64
	maxPayloadLen   = 1024
	maxHeartbeatLen = hbHeaderLen + maxNameLen + maxPayloadLen // 1114: fits a 1280-byte IPv6 minimum MTU

	flagYield = 1 << 0
)

// heartbeat is one datagram of the failover protocol.
type heartbeat struct {
	Name    string // sender's device name
	State   State  // sender's advertised state
	Yield   bool   // sender has run `run sys failover standby` and yields to its peer
	BootID  uint64 // random per Machine; a new one means the peer restarted
	Seq     uint64 // +1 per heartbeat round, per BootID
	Payload []byte // opaque (the daemon's config digest); nil when empty
}

// AppendBinary appends the encoded heartbeat to b (encoding.BinaryAppender).
func (h heartbeat) AppendBinary(b []byte) ([]byte, error) {
	if err := validName(h.Name); err != nil {
		return b, fmt.Errorf("encode heartbeat: %w", err)
	}
	if !h.State.valid() {
		return b, fmt.Errorf("encode heartbeat: unknown state %d", h.State)
	}
	if len(h.Payload) > maxPayloadLen {
		return b, fmt.Errorf("encode heartbeat: payload of %d bytes is over %d", len(h.Payload), maxPayloadLen)
	}
	var flags byte
	if h.Yield {
		flags |= flagYield
	}
	b = append(b, hbMagic...)
	b = append(b, hbVersion, byte(h.State), flags, byte(len(h.Name)))
	b = binary.BigEndian.AppendUint64(b, h.BootID)
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Payload)))
	b = append(b, h.Name...)
	b = append(b, h.Payload...)
	return b, nil
}

// decodeHeartbeat parses one datagram. It accepts exactly what AppendBinary produces and
// nothing else; every error wraps ErrBadHeartbeat. The result does not alias b.
func decodeHeartbeat(b []byte) (heartbeat, error) {
	var h heartbeat
	if len(b) < hbHeaderLen {
		return h, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrBadHeartbeat, len(b), hbHeaderLen)
	}
	if string(b[0:4]) != hbMagic {
		return h, fmt.Errorf("%w: magic %q", ErrBadHeartbeat, b[0:4])
	}
	if b[4] != hbVersion {
		return h, fmt.Errorf("%w: version %d", ErrBadHeartbeat, b[4])
	}
	h.State = State(b[5])
	if !h.State.valid() {
		return h, fmt.Errorf("%w: unknown state %d", ErrBadHeartbeat, b[5])
	}
	if b[6]&^flagYield != 0 {
		return h, fmt.Errorf("%w: unknown flags %#02x", ErrBadHeartbeat, b[6])
	}
	h.Yield = b[6]&flagYield != 0
	nameLen := int(b[7])
	h.BootID = binary.BigEndian.Uint64(b[8:16])
	h.Seq = binary.BigEndian.Uint64(b[16:24])
	payloadLen := int(binary.BigEndian.Uint16(b[24:26]))
	if payloadLen > maxPayloadLen {
		return h, fmt.Errorf("%w: payload of %d bytes is over %d", ErrBadHeartbeat, payloadLen, maxPayloadLen)
	}
	if want := hbHeaderLen + nameLen + payloadLen; len(b) != want {
		return h, fmt.Errorf("%w: %d bytes, the header says %d", ErrBadHeartbeat, len(b), want)
	}
	name := b[hbHeaderLen : hbHeaderLen+nameLen]
	if err := validName(string(name)); err != nil {
		return h, fmt.Errorf("%w: %w", ErrBadHeartbeat, err)
	}
	h.Name = string(name)
	if payloadLen > 0 {
		h.Payload = bytes.Clone(b[hbHeaderLen+nameLen:])
	}
	return h, nil
}

// validName checks a device name: 1 to 64 bytes of printable ASCII with no space, so it
// fits a heartbeat and compares the same way on both devices.
func validName(name string) error {
	if name == "" {
		return fmt.Errorf("empty device name")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("device name of %d bytes is over %d", len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("device name %q: byte %#02x is not printable ASCII", name, c)
		}
	}
	return nil
}
