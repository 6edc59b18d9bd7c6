package mirror

import "encoding/binary"

// heldEntry is what the Receiver remembers of a flow it injected.
type heldEntry struct {
	hash  uint64 // flowHash of the key and the reply tuple last injected
	epoch uint32 // the sync epoch the key was last carried in
	seen  uint32 // the last kernel check that found the key in the table
}

// packedEntry is a heldEntry as the maps store it: byte arrays align to 1, so a map slot
// is the key's size plus 16 (29 bytes for IPv4) instead of being padded to 32.
type packedEntry [16]byte

func (e heldEntry) pack() packedEntry {
	var p packedEntry
	binary.LittleEndian.PutUint64(p[0:], e.hash)
	binary.LittleEndian.PutUint32(p[8:], e.epoch)
	binary.LittleEndian.PutUint32(p[12:], e.seen)
	return p
}

func (p *packedEntry) unpack() heldEntry {
	return heldEntry{
		hash:  binary.LittleEndian.Uint64(p[0:]),
		epoch: binary.LittleEndian.Uint32(p[8:]),
		seen:  binary.LittleEndian.Uint32(p[12:]),
	}
}

// v4Key is an IPv4 packedKey without its family byte and the zeros after each address:
// proto, source address and port, destination address and port.
type v4Key [1 + 2*(4+2)]byte

// heldSet is the Receiver's remembered set: one entry per injected key. IPv4 keys are kept
// in a map of their own, compacted from 38 bytes to 13: a slot costs 29 bytes (and a control
// byte) instead of 54, so the set costs 34 to 69 bytes per IPv4 flow depending on the map's
// load (Go's maps run between 7/16 and 7/8 full, and their tables fill and split together,
// so a million flows, just past a split, sit near the top). An IPv6 flow costs 63 to 126.
// Neither map holds pointers, so neither costs the garbage collector a scan. Not safe for
// concurrent use.
type heldSet struct {
	v4 map[v4Key]packedEntry
	v6 map[packedKey]packedEntry
}

func newHeldSet() heldSet {
	return heldSet{v4: make(map[v4Key]packedEntry), v6: make(map[packedKey]packedEntry)}
}

func compactV4(k *packedKey) v4Key {
	var c v4Key
	c[0] = k[0]
	copy(c[1:5], k[2:6])
	copy(c[5:7], k[18:20])
	copy(c[7:11], k[20:24])
	copy(c[11:13], k[36:38])
	return c
}

func (c *v4Key) expand() packedKey {
	var k packedKey
	k[0], k[1] = c[0], familyV4
	copy(k[2:6], c[1:5])
	copy(k[18:20], c[5:7])
	copy(k[20:24], c[7:11])
	copy(k[36:38], c[11:13])
	return k
}

func (h *heldSet) len() int { return len(h.v4) + len(h.v6) }

func (h *heldSet) get(k *packedKey) (heldEntry, bool) {
	var p packedEntry
	var ok bool
	if k[1] == familyV4 {
		p, ok = h.v4[compactV4(k)]
	} else {
		p, ok = h.v6[*k]
	}
	return p.unpack(), ok
}

func (h *heldSet) set(k *packedKey, e heldEntry) {
	if k[1] == familyV4 {
		h.v4[compactV4(k)] = e.pack()
	} else {
		h.v6[*k] = e.pack()
	}
}

// remove deletes k and returns its entry, if it was held.
func (h *heldSet) remove(k *packedKey) (heldEntry, bool) {
	if k[1] == familyV4 {
		c := compactV4(k)
		p, ok := h.v4[c]
		if ok {
			delete(h.v4, c)
		}
		return p.unpack(), ok
	}
	p, ok := h.v6[*k]
	if ok {
		delete(h.v6, *k)
	}
	return p.unpack(), ok
}

// each calls fn for every entry; fn returns whether to keep it. The key it passes is valid
// during the call only (one variable serves every call: a pointer to a fresh one per entry
// would escape, and cost an allocation per entry).
func (h *heldSet) each(fn func(k *packedKey, e heldEntry) (keep bool)) {
	var k packedKey
	for c, p := range h.v4 {
		k = c.expand()
		if !fn(&k, p.unpack()) {
			delete(h.v4, c)
		}
	}
	for k6, p := range h.v6 {
		k = k6
		if !fn(&k, p.unpack()) {
			delete(h.v6, k6)
		}
	}
}
