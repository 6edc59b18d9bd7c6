package mirror

import (
	"sync"
	"time"
)

type changeOp uint8

const (
	opUpsert changeOp = iota + 1
	opDelete
)

// change is one queued Upsert or Delete.
type change struct {
	op   changeOp
	key  packedKey
	flow Flow // a delete carries Proto and Orig only
}

// queue holds the changes waiting to be sent: one per key, the latest winning, in the order
// their keys were first queued. It is double-buffered: the Sender takes the whole pending batch
// at once and writes it without the lock while producers fill the other buffer, so a producer
// never waits on the network, only (briefly) on the lock.
type queue struct {
	max       int
	wake      chan struct{} // capacity 1: signalled when the queue becomes non-empty (see pushWakes)
	pushWakes bool          // false: only flush signals wake (SenderConfig.WakeOnFlush)

	mu         sync.Mutex
	items      []change
	index      map[packedKey]int // key -> position in items
	spareItems []change          // the other buffer, given back by release
	spareIndex map[packedKey]int
	since      time.Time // when the oldest pending change was queued; zero when none is
}

func newQueue(maxLen int, pushWakes bool) *queue {
	return &queue{max: maxLen, wake: make(chan struct{}, 1), pushWakes: pushWakes, index: make(map[packedKey]int)}
}

// signal wakes the Sender, unless a wake is already pending.
func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// flush wakes the Sender if anything is queued.
func (q *queue) flush() {
	if q.len() > 0 {
		q.signal()
	}
}

// push queues c, replacing a queued change with the same key in place. When the queue already
// holds max distinct keys, it drops them all and reports overflowed: the caller must force a
// full sync, which carries the current state of every dropped key. c itself is queued either way.
// An upsert without a TCP state keeps the state of the upsert it replaces.
func (q *queue) push(c change) (overflowed bool) {
	q.mu.Lock()
	if i, ok := q.index[c.key]; ok {
		if old := &q.items[i]; c.op == opUpsert && old.op == opUpsert && unknownTCPState(&c.flow) {
			c.flow.TCPState = old.flow.TCPState
		}
		q.items[i] = c
		q.mu.Unlock()
		return false // already pending, so the Sender has already been woken
	}
	if len(q.items) >= q.max {
		clear(q.items)
		q.items = q.items[:0]
		clear(q.index)
		overflowed = true
	}
	if len(q.items) == 0 && q.since.IsZero() {
		q.since = time.Now()
	}
	q.index[c.key] = len(q.items)
	q.items = append(q.items, c)
	q.mu.Unlock()
	if q.pushWakes {
		q.signal()
	}
	return overflowed
}

// batch is what take hands out; give it back with release.
type batch struct {
	items []change
	index map[packedKey]int
	since time.Time // when its oldest change was queued
}

// take removes and returns every pending change, oldest key first.
func (q *queue) take() batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return batch{}
	}
	b := batch{items: q.items, index: q.index, since: q.since}
	q.items, q.index, q.since = q.spareItems, q.spareIndex, time.Time{}
	q.spareItems, q.spareIndex = nil, nil
	if q.index == nil {
		q.index = make(map[packedKey]int)
	}
	return b
}

// release gives a taken batch's buffers back for reuse. It clears them outside the lock: only
// the keys the batch held, since clearing a map is proportional to its capacity, which a past
// burst may have made large. It reports whether it dropped them instead: a burst's buffers,
// whose memory should go back to the system rather than wait for the next burst.
func (q *queue) release(b batch) (dropped bool) {
	if b.index == nil {
		return false
	}
	if cap(b.items) > maxSpare {
		return true
	}
	for i := range b.items {
		delete(b.index, b.items[i].key)
	}
	clear(b.items)
	q.mu.Lock()
	q.spareItems, q.spareIndex = b.items[:0], b.index
	q.mu.Unlock()
	return false
}

// maxSpare is the largest batch whose buffers release keeps for reuse: a batch taken in
// steady state is far smaller, and one of a million changes after a burst would otherwise pin
// a few hundred megabytes for good.
const maxSpare = 1 << 16

// putBack requeues changes that were taken but not written (the connection failed), ahead of
// those queued since, skipping keys that have a newer change queued. If that would exceed max,
// it keeps only the newer changes: a reconnection always starts with a full sync, which carries
// the current state of every key anyway. since is when the oldest of rest was queued.
func (q *queue) putBack(rest []change, since time.Time) {
	if len(rest) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(rest)+len(q.items) > q.max {
		return
	}
	if q.since.IsZero() || since.Before(q.since) {
		q.since = since
	}
	items := make([]change, 0, len(rest)+len(q.items))
	for _, c := range rest {
		if i, ok := q.index[c.key]; !ok {
			items = append(items, c)
		} else if newer := &q.items[i]; c.op == opUpsert && newer.op == opUpsert && unknownTCPState(&newer.flow) {
			newer.flow.TCPState = c.flow.TCPState
		}
	}
	items = append(items, q.items...)
	clear(q.index)
	for i := range items {
		q.index[items[i].key] = i
	}
	q.items = items
	q.signal()
}

// len returns the number of pending changes.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}
