// Package tmsh is the tmsh language: it parses command lines, runs them against the
// daemon's core and prints BIG-IP's outputs. The control API hands it lines from the shell;
// it keeps no state between commands but the caller's Session.
package tmsh

import (
	"context"
	"io"
	"net/netip"
	"time"

	"github.com/openappliance/appliance/appliance/config"
)

// Core is what the language needs from the daemon. Every method is safe for concurrent use.
type Core interface {
	// Config returns the running configuration; the caller must not change it.
	Config() config.Config
	// Update applies change to a copy of the running configuration, validates it, saves it
	// and reconciles the kernel; on any error nothing changes.
	Update(ctx context.Context, change func(*config.Config) error) error
	// Save writes the running configuration to its files.
	Save(ctx context.Context) error
	// Load replaces the running configuration with what its files hold.
	Load(ctx context.Context) error
	// Connections calls fn for each connection-tracking entry that matches the filter,
	// streaming: it never holds the whole table.
	Connections(ctx context.Context, f ConnFilter, fn func(Connection) error) error
	// DeleteConnections removes from the kernel's table every connection that matches the
	// filter, streaming as Connections does, and returns how many it removed.
	DeleteConnections(ctx context.Context, f ConnFilter) (int, error)
	// Failover reports the HA state.
	Failover() FailoverStatus
	// ForceStandby makes an Active device Standby (run sys failover standby).
	ForceStandby(ctx context.Context) error
	// ConfigSync pushes the shared configuration to the other devices of group.
	ConfigSync(ctx context.Context, group string) error
	// Ping sends count ICMP echo requests to host from the device's own network (its
	// namespace, its routes and self IPs) and writes the output as it comes. It fails when
	// no reply came.
	Ping(ctx context.Context, host netip.Addr, count int, w io.Writer) error
}

// ConnFilter selects connections for show sys connection; zero fields match everything.
type ConnFilter struct {
	MirrorOnly   bool
	Protocol     uint8
	CSClientAddr netip.Addr
	CSClientPort uint16
	CSServerAddr netip.Addr
	CSServerPort uint16
	SSClientAddr netip.Addr
	SSClientPort uint16
	SSServerAddr netip.Addr
	SSServerPort uint16
	Virtual      string
	MinIdle      uint32 // seconds (BIG-IP's age filter)
}

// Connection is one entry of the connection table, in BIG-IP's client-side/server-side terms.
type Connection struct {
	Protocol uint8
	CSClient netip.AddrPort // the client
	CSServer netip.AddrPort // the virtual address
	SSClient netip.AddrPort // the SNAT address (the client again without SNAT)
	SSServer netip.AddrPort // the pool member
	Idle     uint32         // seconds, from the kernel's timeout (default minus remaining)
	State    string         // TCP state, such as ESTABLISHED
	Offload  string         // flow acceleration: none, sw-offload, hw-offload
	Virtual  string
	Mirrored bool
}

// FailoverStatus is the device's HA state as show cm failover-status prints it.
type FailoverStatus struct {
	Device        string
	State         string // Active, Standby, Offline
	Since         time.Time
	Reason        string
	Peer          string
	PeerState     string
	PeerAlive     bool
	PeerLastHeard time.Time
	LocalAddress  string
	PeerAddress   string
	SyncStatus    string // In Sync, Changes Pending, Disconnected, Standalone
	SyncSummary   string
	Group         string
	Failovers     uint64
	// FailoverCauses counts the failovers by cause (such as peer_lost), in the order to
	// print them; causes never seen are left out.
	FailoverCauses []CauseCount
	Mirror         MirrorStatus
	HeartbeatsSent uint64
	HeartbeatsRecv uint64
	HeartbeatsLost uint64 // gaps in the peer's sequence: heartbeats lost or late
	GARPsSent      uint64 // gratuitous ARPs and unsolicited neighbour advertisements
	NetTimeout     time.Duration
}

// EntryCount is the number of mirrored entries of one protocol in one TCP state (State is
// empty for UDP).
type EntryCount struct {
	Protocol, State string
	Count           int
}

// CauseCount is the number of failovers that one cause made.
type CauseCount struct {
	Cause string
	Count uint64
}

// MirrorStatus is the connection mirroring channel as show sys mirror prints it.
type MirrorStatus struct {
	Role         string // sender (Active), receiver (Standby), or none
	Peer         string
	Connected    bool
	FlowsSent    uint64
	DeletesSent  uint64
	Syncs        uint64
	QueueDepth   int
	Overflows    uint64
	Overruns     uint64 // conntrack event socket overruns on this device
	FlowsHeld    int    // receiver: mirrored flows held
	Applied      uint64
	InjectErrors uint64
	StaleDeleted uint64

	// Sender: the mirror lag, from the queueing of a change to the standby's word that its
	// kernel holds it (zero: no sample).
	LagLast, LagMax time.Duration

	// The mirrored entries of this device's kernel by protocol and TCP state, as counted
	// by the last dump of the table (every digest interval), and when.
	Entries   []EntryCount
	EntriesAt time.Time

	// Anti-entropy: the active sends digests of its table; the standby compares, reports
	// drift and asks for a full sync to repair it.
	DigestsSent      uint64
	ResyncsRequested uint64 // sender: full syncs the peer asked for
	DigestsChecked   uint64
	DriftDetected    uint64
	Repairs          uint64
	LastDrift        time.Time
	LastDigestMatch  time.Time
}
