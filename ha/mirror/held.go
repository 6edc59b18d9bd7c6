package mirror

// heldEntry is what the Receiver remembers of a flow it injected: 16 bytes, no pointers.
type heldEntry struct {
	hash  uint64 // flowHash of the key and the reply tuple last injected
	epoch uint32 // the sync epoch the key was last carried in
	seen  uint32 // the last kernel check that found the key in the table
}

// v4Key is an IPv4 packedKey without its family byte and the zeros after each address:
// proto, source address and port, destination address and port.
type v4Key [1 + 2*(4+2)]byte

// heldSet is the Receiver's remembered set: one entry per injected key. IPv4 keys are kept
// in a map of their own, compacted from 38 bytes to 13: a slot costs 32 bytes instead of 56,
// so the set stays under 100 bytes per IPv4 flow whatever the map's load (Go's maps run
// between 7/16 and 7/8 full), about 40 to 75. An IPv6 flow costs about 65 to 130. Neither map
// holds pointers, so neither costs the garbage collector a scan. Not safe for concurrent use.
type heldSet struct {
	v4 map[v4Key]heldEntry
	v6 map[packedKey]heldEntry
}

func newHeldSet() heldSet {
	return heldSet{v4: make(map[v4Key]heldEntry), v6: make(map[packedKey]heldEntry)}
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
	if k[1] == familyV4 {
		e, ok := h.v4[compactV4(k)]
		return e, ok
	}
	e, ok := h.v6[*k]
	return e, ok
}

func (h *heldSet) set(k *packedKey, e heldEntry) {
	if k[1] == familyV4 {
		h.v4[compactV4(k)] = e
	} else {
		h.v6[*k] = e
	}
}

// remove deletes k and returns its entry, if it was held.
func (h *heldSet) remove(k *packedKey) (heldEntry, bool) {
	if k[1] == familyV4 {
		c := compactV4(k)
		e, ok := h.v4[c]
		if ok {
			delete(h.v4, c)
		}
		return e, ok
	}
	e, ok := h.v6[*k]
	if ok {
		delete(h.v6, *k)
	}
	return e, ok
}

// each calls fn for every entry; fn returns whether to keep it. The key it passes is valid
// during the call only (one variable serves every call: a pointer to a fresh one per entry
// would escape, and cost an allocation per entry).
func (h *heldSet) each(fn func(k *packedKey, e heldEntry) (keep bool)) {
	var k packedKey
	for c, e := range h.v4 {
		k = c.expand()
		if !fn(&k, e) {
			delete(h.v4, c)
		}
	}
	for k6, e := range h.v6 {
		k = k6
		if !fn(&k, e) {
			delete(h.v6, k6)
		}
	}
}
