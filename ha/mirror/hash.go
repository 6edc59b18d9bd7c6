package mirror

import (
	"encoding/binary"
	"math/bits"
)

// The anti-entropy digest (see doc.go) sums a 64-bit hash of every flow's key and reply tuple.
// Both ends must compute the same hash, so it cannot be hash/maphash (seeded per process); it
// is XXH64 with seed 0, written out here from the specification
// (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), tested against its
// reference values.

const (
	xxPrime1 uint64 = 11400714785074694791
	xxPrime2 uint64 = 14029467366897019727
	xxPrime3 uint64 = 1609587929392839161
	xxPrime4 uint64 = 9650029242287828579
	xxPrime5 uint64 = 2870177450012600261
)

func xxRound(acc, in uint64) uint64 {
	acc += in * xxPrime2
	return bits.RotateLeft64(acc, 31) * xxPrime1
}

func xxMerge(acc, v uint64) uint64 {
	acc ^= xxRound(0, v)
	return acc*xxPrime1 + xxPrime4
}

// xxh64 returns the XXH64 hash of b with seed 0.
func xxh64(b []byte) uint64 {
	n := len(b)
	var h uint64
	if n >= 32 {
		v1 := xxPrime1
		v1 += xxPrime2
		v2 := xxPrime2
		var v3 uint64
		v4 := uint64(0)
		v4 -= xxPrime1
		for len(b) >= 32 {
			v1 = xxRound(v1, binary.LittleEndian.Uint64(b[0:8]))
			v2 = xxRound(v2, binary.LittleEndian.Uint64(b[8:16]))
			v3 = xxRound(v3, binary.LittleEndian.Uint64(b[16:24]))
			v4 = xxRound(v4, binary.LittleEndian.Uint64(b[24:32]))
			b = b[32:]
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = xxMerge(h, v1)
		h = xxMerge(h, v2)
		h = xxMerge(h, v3)
		h = xxMerge(h, v4)
	} else {
		h = xxPrime5
	}
	h += uint64(n)
	for ; len(b) >= 8; b = b[8:] {
		h ^= xxRound(0, binary.LittleEndian.Uint64(b))
		h = bits.RotateLeft64(h, 27)*xxPrime1 + xxPrime4
	}
	if len(b) >= 4 {
		h ^= uint64(binary.LittleEndian.Uint32(b)) * xxPrime1
		h = bits.RotateLeft64(h, 23)*xxPrime2 + xxPrime3
		b = b[4:]
	}
	for _, c := range b {
		h ^= uint64(c) * xxPrime5
		h = bits.RotateLeft64(h, 11) * xxPrime1
	}
	h ^= h >> 33
	h *= xxPrime2
	h ^= h >> 29
	h *= xxPrime3
	h ^= h >> 32
	return h
}

// keyHash identifies a key in 64 bits: the Sender's digest matches the flows of a dump with
// the changes queued meanwhile by it (a collision costs at most one spurious mismatch).
func keyHash(k *packedKey) uint64 { return xxh64(k[:]) }

// flowHash is a flow's contribution to a digest: XXH64 of its packed key followed by its reply
// tuple in the same layout (address in 16 bytes, IPv4 in the first 4, then the port), so that
// the family, protocol and every address and port count. State, timeout and mark do not: they
// change all the time without the flow being any different for failover, and the active's
// timers run on while the standby's copy keeps the value of the last event.
func flowHash(k *packedKey, reply Tuple) uint64 {
	var b [len(packedKey{}) + 2*18]byte
	copy(b[:], k[:])
	fam := k[1]
	putAddrPort(b[38:56], reply.Src, fam)
	putAddrPort(b[56:74], reply.Dst, fam)
	return xxh64(b[:])
}

// digest is an order-independent summary of a set of flows: how many, and the sum (mod 2^64)
// of their flowHash values. A sum, unlike an exclusive or, does not cancel a flow counted
// twice, and it can be updated in place when a flow is added, replaced or removed.
type digest struct {
	count uint64
	sum   uint64
}

func (d *digest) add(h uint64)    { d.count++; d.sum += h }
func (d *digest) remove(h uint64) { d.count--; d.sum -= h }

// digestOf returns the digest of a set of flows; the tests use it. Invalid flows are skipped,
// as the Sender skips them.
func digestOf(flows []Flow) digest {
	var d digest
	for i := range flows {
		f := &flows[i]
		fam, err := flowFamily(f)
		if err != nil {
			continue
		}
		k := packKey(f.Proto, fam, f.Orig)
		d.add(flowHash(&k, f.Reply))
	}
	return d
}
