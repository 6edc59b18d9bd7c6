// Package mirror streams connection-tracking entries from the active device to the standby, so
// that every mirrored connection survives a failover (BIG-IP's connection mirroring).
//
// The active runs a Sender, fed by the daemon with the conntrack events of the flows to mirror
// (Upsert, Delete) and a Snapshot function that dumps them; the standby runs a Receiver, which
// writes what arrives into a FlowWriter, the daemon's adapter over the kernel's conntrack table.
// The package imports neither kernel/ nor appliance/.
//
// # Consistency
//
// A connection starts with a full sync: every flow of a fresh snapshot between SyncBegin and
// SyncEnd. The Receiver remembers the keys it has injected and, at SyncEnd, deletes those the
// sync did not carry, so after a full sync the standby holds exactly the active's set. Changes
// then stream in the order their keys were first queued, coalesced per key while queued (the
// latest wins). Changes queued while a snapshot is being sent go out after its SyncEnd, because
// they may be newer than what the dump saw. Nothing is lost silently: when the queue overflows
// (SenderConfig.MaxQueue distinct keys), it is dropped, counted, and replaced by a full sync;
// when the connection fails, the Sender reconnects (to the next peer address if need be) and
// syncs in full again.
//
// # Anti-entropy
//
// Events can still be lost in ways the stream cannot see (an event the daemon missed, an entry
// that expired or was deleted on the standby, a write the standby's kernel refused), so the two
// ends compare their tables, by digest rather than by copy, and repair what differs:
//
//   - Every SenderConfig.DigestInterval (10s; longer for a table so large that a dump takes
//     more than a twentieth of that) the Sender dumps its table (Snapshot) and writes a
//     Digest: the number of flows and the sum (mod 2^64) of XXH64 over each flow's key and reply
//     tuple (state, timeout and mark change all the time and do not count). The dump is not
//     atomic, so the Sender keeps sending changes while it runs, remembers the last change sent
//     for each key meanwhile, waits 20ms for late events (still sending changes as they come),
//     sends the queue once more and then counts the dumped flows of unchanged keys plus the
//     latest state of the changed ones: the digest of its table as of the last change before
//     the Digest frame, exactly what the Receiver holds when it reads that frame. Churn
//     therefore causes no mismatch; one can come only from an event that trails its change by
//     more than those 20ms (a burst of thousands of expiries that the event reader is still
//     reading), or from a dump that repeats or skips an entry (the kernel's table resizing
//     under it).
//   - The Receiver keeps the same digest of what it holds (a 64-bit hash per key, updated at
//     every write, so comparing costs nothing). A mismatch makes it ask for a confirmation
//     (DigestRequest), which the Sender answers at once; a second mismatch running is drift:
//     counted, logged, and repaired by a full sync (ResyncRequest), whose sweep also deletes the
//     stale entries. Drift is thus repaired about one interval after it arises, and a race costs
//     at most one extra digest, never a full sync. A second mismatch smaller than the first
//     (held minus active flows nearer zero) is the stream catching up with a burst of events
//     that the active had not yet read when it dumped (tens of thousands of entries expiring
//     or flushed at once): it is asked about again, up to 8 times, while it shrinks.
//   - With ReceiverConfig.Snapshot (the standby's own kernel view), every Digest also starts a
//     check of the kernel table against the remembered set, key by key, in a goroutine while
//     the stream goes on; keys that the stream writes meanwhile are left out (the write settles
//     them). An entry in the kernel that the Receiver did not inject is deleted on the spot (the
//     active does not have it: the stream would have told us). An entry missing from the kernel,
//     or present with another reply tuple, needs the active's data: when the same key is wrong
//     at two checks running (the first asks for an early digest, so the second follows at once)
//     the Receiver asks for a full sync. One sighting is not enough because a flow that expires
//     on both devices leaves the standby's kernel a moment before the active's event arrives.
//   - A drift that a full sync does not cure (a flow the standby's kernel refuses) is reported
//     at every digest, but asks for another full sync only after 30s, then 1, 2, ... 10 minutes,
//     until a clean digest resets the pause.
//
// # Batching
//
// A producer that queues changes in bursts sets SenderConfig.WakeOnFlush and calls Flush at
// the end of each (the daemon's event reader does, once per burst it reads from its socket):
// the burst then leaves in one write, without the Sender waking at its first change.
//
// The Receiver writes runs of consecutive FlowUpserts (up to 256, one per key, the latest) with
// one BatchWriter.InjectBatch call when its Table has it. A run ends when no whole frame is left
// in the read buffer (so nothing waits on the network) or at any other frame than a Keepalive:
// deletes, syncs and digests stay in stream order.
//
// # Wire protocol
//
// One TCP connection from the Sender to the Receiver's mirror address, port 1028. The Sender
// writes the stream; the Receiver writes back only the rare ResyncRequest and DigestRequest
// frames and the answers to lag probes, in the same framing. Each end drops a connection that carries a frame meant for the
// other direction. Frames, integers big-endian:
//
//	frame  = length:u16  type:u8  payload      length counts type+payload: 1..512
//
//	type 1 Hello      magic:"OAMR" version:u8(=1) session:u64 namelen:u8 name:namelen bytes (UTF-8)
//	type 2 FlowUpsert proto:u8 family:u8 origsrc origdst replysrc replydst tcpstate:u8 timeout:u32 mark:u32
//	type 3 FlowDelete proto:u8 family:u8 origsrc origdst
//	type 4 SyncBegin  id:u32
//	type 5 SyncEnd    id:u32 count:u64        count = FlowUpserts since the SyncBegin with this id
//	type 6 Keepalive  (empty)
//	type 7 Digest     id:u32 count:u64 sum:u64   id counts from 1 on each connection
//	type 10 LagProbe  id:u32
//	back channel, Receiver to Sender:
//	type 8 ResyncRequest  reason:u8              1 digest mismatch, 2 kernel table drift
//	type 9 DigestRequest  (empty)
//	type 11 LagAck        id:u32                 the LagProbe's, once the changes before it are written
//
//	endpoint = addr:4 bytes (family 4) or 16 bytes (family 6)  port:u16
//
// A FlowUpsert is 38 bytes on the wire for IPv4 and 86 for IPv6; a FlowDelete 17 and 41. The
// first frame is a Hello: its magic and version come first so that any future version can be
// told apart; a Receiver refuses a version it does not speak. session is random per Sender (it
// tells the peer's restarts apart in logs); name is the sending device. A SyncBegin while a sync
// is in progress abandons that sync (the Sender restarts a sync that an overflow or Resync
// interrupts); a SyncEnd whose id or count does not match makes the Receiver drop the
// connection, so a damaged sync never deletes anything. The Sender writes a Keepalive after each
// idle second; the Receiver drops a connection silent for four seconds, and the Sender's kernel
// one whose data stays unacknowledged for five (TCP_USER_TIMEOUT), after which the Sender tries
// the peer's addresses again in order. A Sender sends Digest frames only after the connection's
// first full sync and never inside one; a Receiver drops a connection that does otherwise. The
// frames of types 7 to 11 came after version 1 was first released, without a version change:
// both devices of a pair are upgraded together, and a Receiver that predates them drops the
// connection at the first Digest or LagProbe.
//
// # Lag
//
// At most every 100ms while changes flow, the Sender follows a batch with a LagProbe; the
// Receiver, which writes the changes before any frame but a Keepalive, answers it once they
// are in its kernel. The time from the queueing of the batch's oldest change to the answer,
// on the Sender's clock, is a sample of the mirror lag (SenderStats.Lag*; see lag.go).
//
// The decoder accepts exactly what the encoder writes (any other length, family or type is an
// error wrapping ErrMalformed), reads a frame in place from its buffer, and never holds more than
// 514 bytes of one frame. The Sender writes frames into a 64 KiB bufio.Writer and flushes when
// its queue runs empty, so a busy stream costs one write system call per ~1,700 IPv4 flows.
package mirror
