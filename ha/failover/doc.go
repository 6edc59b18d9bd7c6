// Package failover is the network-failover state machine of an HA pair: each device sends
// heartbeats over UDP (port 1026 on its unicast addresses) to its peer, and the pair agrees
// which device is Active (takes traffic) and which is Standby, as a BIG-IP pair does.
//
// A Machine owns one goroutine (started by Run) that holds the state; every input — a
// heartbeat received, a tick, the end of a hook call, ForceStandby, Reconfigure — is an
// event on that goroutine, so there is one order of events. The daemon gives a Machine its
// Hooks (move the floating addresses, start or stop mirroring) and reads Status.
//
// # Transitions
//
// The decision is the pure function next(current, view); both devices evaluate the same
// rules on the same facts, so they agree without a third party. "Alive" means a heartbeat
// from the peer within Timeout (failover.nettimeout). A device yields after ForceStandby
// (`run sys failover standby`) until it sees its peer Active.
//
//	current  peer (as heard)                  next     reason
//	Offline  any                              Standby  starting (BecomeStandby cleans the kernel state)
//	Standby  no heartbeat socket bound yet    Standby  waiting for a heartbeat socket to bind
//	Standby  not alive, never heard, < wait   Standby  waiting Timeout to hear a peer
//	Standby  not alive, never heard, >= wait  Active   no peer heard within 3s
//	Standby  not alive (was heard)            Active   peer lb2 heartbeat lost after 3s
//	Standby  Active                           Standby  peer is active (no fail-back)
//	Standby  Offline, < wait                  Standby  peer is starting
//	Standby  Offline, >= wait                 Active   peer is offline
//	Standby  Standby, I yield, peer does not  Standby  yielded to peer
//	Standby  Standby, peer yields, I do not   Active   peer lb2 yielded
//	Standby  Standby, both or neither yield   lower device name Active (tie-break)
//	Active   Active (split brain healed)      the higher device name goes Standby
//	Active   anything else                    Active
//
// "wait" is the time since the first heartbeat socket was bound (since Run started, for a
// standalone device with no unicast address): a device never goes Active for want of a
// peer before it has listened for one full Timeout, so a restarted old active that hears
// an active peer stays Standby. Names compare as byte strings.
//
// While a hook runs, a device going Active already advertises Active (it claims early), and
// a device going Standby still advertises Active until its floating addresses are gone
// (it releases late), so the peer never takes addresses that are still in use and two
// Standby devices never both decide to take over.
//
// # Heartbeat
//
// One UDP datagram, big-endian, at most 1114 bytes:
//
//	offset size
//	0      4    magic "OAHB"
//	4      1    version (1)
//	5      1    state (0 Offline, 1 Standby, 2 Active)
//	6      1    flags (bit 0: yield; other bits must be zero)
//	7      1    name length N (1..64)
//	8      8    boot id (random, chosen by New; tells a restarted peer apart)
//	16     8    sequence number (per boot id, +1 per heartbeat round)
//	24     2    payload length P (0..1024)
//	26     N    device name (printable ASCII, no space)
//	26+N   P    payload (opaque; the daemon's config digest)
//
// Anything else (short, long, other magic or version, unknown state or flag) is rejected.
// The same sequence number goes to every peer address, so copies that arrive over several
// paths count once, and a gap in the sequence counts as missed heartbeats.
package failover
