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
// # Wire protocol
//
// One TCP connection from the Sender to the Receiver's mirror address, port 1028; only the
// Sender writes. The stream is a sequence of frames, integers big-endian:
//
//	frame  = length:u16  type:u8  payload      length counts type+payload: 1..512
//
//	type 1 Hello      magic:"OAMR" version:u8(=1) session:u64 namelen:u8 name:namelen bytes (UTF-8)
//	type 2 FlowUpsert proto:u8 family:u8 origsrc origdst replysrc replydst tcpstate:u8 timeout:u32 mark:u32
//	type 3 FlowDelete proto:u8 family:u8 origsrc origdst
//	type 4 SyncBegin  id:u32
//	type 5 SyncEnd    id:u32 count:u64        count = FlowUpserts since the SyncBegin with this id
//	type 6 Keepalive  (empty)
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
// the peer's addresses again in order.
//
// The decoder accepts exactly what the encoder writes (any other length, family or type is an
// error wrapping ErrMalformed), reads a frame in place from its buffer, and never holds more than
// 514 bytes of one frame. The Sender writes frames into a 64 KiB bufio.Writer and flushes when
// its queue runs empty, so a busy stream costs one write system call per ~1,700 IPv4 flows.
package mirror
