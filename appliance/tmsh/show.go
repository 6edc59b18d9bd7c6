package tmsh

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/openappliance/appliance/appliance/config"
)

// connFilterSpecs are BIG-IP's show sys connection filters (delete sys connection takes
// the same), and its options.
var connFilterSpecs = []prop{
	flagProp("all-properties", "print every field of each connection"),
	freeProp("age", "only connections idle at least this many seconds", "<seconds>"),
	freeProp("cs-client-addr", "client-side client address", "<ip-address>"),
	freeProp("cs-client-port", "client-side client port", "<port>"),
	freeProp("cs-server-addr", "client-side server (virtual) address", "<ip-address>"),
	freeProp("cs-server-port", "client-side server (virtual) port", "<port>"),
	enumProp("protocol", "the IP protocol", "tcp", "udp"),
	freeProp("ss-client-addr", "server-side client (SNAT) address", "<ip-address>"),
	freeProp("ss-client-port", "server-side client (SNAT) port", "<port>"),
	freeProp("ss-server-addr", "server-side server (pool member) address", "<ip-address>"),
	freeProp("ss-server-port", "server-side server (pool member) port", "<port>"),
	enumProp("type", "mirror: only mirrored connections", "any", "mirror"),
	{name: "virtual-server", help: "only connections of this virtual server", ref: "ltm virtual"},
}

// parseConnFilter reads show/delete sys connection filters; a filter given in the current
// folder's terms (virtual-server vs) is resolved in partition.
func parseConnFilter(args []Node, partition string) (ConnFilter, bool, error) {
	var f ConnFilter
	all := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a.IsBlock {
			return f, false, syntaxf("%q unexpected argument", a.String())
		}
		spec, ok := findProp(connFilterSpecs, a.Word)
		if !ok {
			return f, false, syntaxf("%q unexpected argument", a.Word)
		}
		if !spec.takesValue() {
			all = true
			continue
		}
		if i+1 >= len(args) || args[i+1].IsBlock {
			return f, false, syntaxf("%q requires a value", a.Word)
		}
		v := args[i+1].Word
		i++
		var err error
		switch a.Word {
		case "type":
			switch v {
			case "mirror":
				f.MirrorOnly = true
			case "any":
			default:
				return f, false, syntaxf("type: %q must be any or mirror", v)
			}
		case "protocol":
			switch v {
			case "tcp":
				f.Protocol = 6
			case "udp":
				f.Protocol = 17
			default:
				return f, false, syntaxf("protocol: %q must be tcp or udp", v)
			}
		case "age":
			n, perr := strconv.ParseUint(v, 10, 32)
			if perr != nil {
				return f, false, syntaxf("age: %q must be a number of seconds", v)
			}
			f.MinIdle = uint32(n)
		case "cs-client-addr":
			f.CSClientAddr, err = parseAddr(a.Word, v)
		case "cs-server-addr":
			f.CSServerAddr, err = parseAddr(a.Word, v)
		case "ss-client-addr":
			f.SSClientAddr, err = parseAddr(a.Word, v)
		case "ss-server-addr":
			f.SSServerAddr, err = parseAddr(a.Word, v)
		case "cs-client-port":
			f.CSClientPort, err = parseFilterPort(a.Word, v)
		case "cs-server-port":
			f.CSServerPort, err = parseFilterPort(a.Word, v)
		case "ss-client-port":
			f.SSClientPort, err = parseFilterPort(a.Word, v)
		case "ss-server-port":
			f.SSServerPort, err = parseFilterPort(a.Word, v)
		case "virtual-server":
			f.Virtual = config.FullPath(v, partition)
		}
		if err != nil {
			return f, false, err
		}
	}
	return f, all, nil
}

func parseFilterPort(prop, s string) (uint16, error) {
	p, err := parsePort(s)
	if err != nil || p == 0 {
		return 0, syntaxf("%s: %q is not a port", prop, s)
	}
	return p, nil
}

// Match reports whether c passes the filter.
func (f ConnFilter) Match(c Connection) bool {
	switch {
	case f.MirrorOnly && !c.Mirrored,
		f.Protocol != 0 && f.Protocol != c.Protocol,
		f.CSClientAddr.IsValid() && f.CSClientAddr != c.CSClient.Addr(),
		f.CSClientPort != 0 && f.CSClientPort != c.CSClient.Port(),
		f.CSServerAddr.IsValid() && f.CSServerAddr != c.CSServer.Addr(),
		f.CSServerPort != 0 && f.CSServerPort != c.CSServer.Port(),
		f.SSClientAddr.IsValid() && f.SSClientAddr != c.SSClient.Addr(),
		f.SSClientPort != 0 && f.SSClientPort != c.SSClient.Port(),
		f.SSServerAddr.IsValid() && f.SSServerAddr != c.SSServer.Addr(),
		f.SSServerPort != 0 && f.SSServerPort != c.SSServer.Port(),
		f.Virtual != "" && f.Virtual != c.Virtual,
		f.MinIdle != 0 && c.Idle < f.MinIdle:
		return false
	}
	return true
}

// ProtocolName is the name tmsh prints for an IP protocol number.
func ProtocolName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

// showConnections prints BIG-IP's Sys::Connections table. The traffic processor column that
// BIG-IP fills with its tmm number has no Linux equivalent (the kernel does not pin a flow to
// a CPU), so it reads "(tmm: none)"; the acceleration column gives the Linux flowtable
// offload state. Rows stream out as the kernel's table is read.
func (in *Interpreter) showConnections(ctx context.Context, s *Session, args []Node, w io.Writer) error {
	f, all, err := parseConnFilter(args, s.folder())
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString("Sys::Connections\n")
	n := 0
	var flushed time.Time
	err = in.core.Connections(ctx, f, func(c Connection) error {
		n++
		writeConnRow(bw, c, all)
		// The first row goes out at once, and rows that trickle in (a filter matching few
		// of a large table) within rowsLinger; the rest in 64 KB writes.
		if n == 1 || time.Since(flushed) >= rowsLinger {
			flushed = time.Now()
			return flushThrough(bw, w)
		}
		return nil
	})
	if err != nil {
		bw.Flush()
		return err
	}
	fmt.Fprintf(bw, "Total records returned: %d\n", n)
	return bw.Flush()
}

// rowsLinger is the longest a listing keeps a row it has written before it sends it.
const rowsLinger = 200 * time.Millisecond

// flushThrough writes out what bw holds, and what w holds if it buffers too (an HTTP
// response does).
func flushThrough(bw *bufio.Writer, w io.Writer) error {
	if err := bw.Flush(); err != nil {
		return err
	}
	if f, ok := w.(interface{ Flush() }); ok {
		f.Flush()
	}
	return nil
}

func writeConnRow(w *bufio.Writer, c Connection, all bool) {
	if all {
		fmt.Fprintf(w, "%s  %s  %s  %s\n", formatAddrPort(c.CSClient), formatAddrPort(c.CSServer), formatAddrPort(c.SSClient), formatAddrPort(c.SSServer))
		fmt.Fprintf(w, "---------------------------------------------------\n")
		fmt.Fprintf(w, "  Protocol          %s\n", ProtocolName(c.Protocol))
		fmt.Fprintf(w, "  Idle Time         %d\n", c.Idle)
		fmt.Fprintf(w, "  State             %s\n", c.State)
		fmt.Fprintf(w, "  Virtual Server    %s\n", c.Virtual)
		fmt.Fprintf(w, "  Mirror            %s\n", enabledWord(c.Mirrored))
		fmt.Fprintf(w, "  Acceleration      %s\n\n", c.Offload)
		return
	}
	fmt.Fprintf(w, "%-21s  %-21s  %-21s  %-21s  %-4s %-5d (tmm: none)  %s\n",
		formatAddrPort(c.CSClient), formatAddrPort(c.CSServer), formatAddrPort(c.SSClient), formatAddrPort(c.SSServer),
		ProtocolName(c.Protocol), c.Idle, c.Offload)
}

func header(w *strings.Builder, title string, width int) {
	line := strings.Repeat("-", width)
	fmt.Fprintf(w, "%s\n%s\n%s\n", line, title, line)
}

func showFailoverStatus(w io.Writer, st FailoverStatus) error {
	var b strings.Builder
	header(&b, "CM::Failover Status", 22)
	color := failoverColor(st.State)
	active := 0
	if st.State == "Active" {
		active = 1
	}
	fmt.Fprintf(&b, "Color    %s\n", color)
	fmt.Fprintf(&b, "Status   %s\n", strings.ToUpper(st.State))
	fmt.Fprintf(&b, "Summary  %d/1 active\n", active)
	fmt.Fprintf(&b, "Details\n")
	if !st.Since.IsZero() {
		fmt.Fprintf(&b, "         %s: %s\n", st.Since.Format("Mon Jan _2 15:04:05 2006"), st.Reason)
	}
	b.WriteString("\n")
	header(&b, "CM::Failover Status Network Failover", 86)
	fmt.Fprintf(&b, "%-18s %-21s %-18s %-21s %s\n", "Local Device Name", "Local Address", "Remote Device Name", "Remote Address", "Status")
	if st.Peer != "" {
		status := "Heartbeat lost"
		if st.PeerAlive {
			status = "Heartbeats received, peer " + st.PeerState
		}
		fmt.Fprintf(&b, "%-18s %-21s %-18s %-21s %s\n", st.Device, st.LocalAddress, st.Peer, st.PeerAddress, status)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// failoverColor is the color BIG-IP gives a failover state.
func failoverColor(state string) string {
	switch state {
	case "Active":
		return "green"
	case "Offline":
		return "red"
	}
	return "gray"
}

// syncColor is the color BIG-IP gives a sync status.
func syncColor(status string) string {
	switch status {
	case "Changes Pending", "Awaiting Initial Sync":
		return "yellow"
	case "Disconnected":
		return "red"
	case "Standalone":
		return "blue"
	}
	return "green"
}

func showSysFailover(w io.Writer, st FailoverStatus) error {
	var b strings.Builder
	header(&b, "Sys::Failover", 38)
	fmt.Fprintf(&b, "Failover %s for %s\n", strings.ToLower(st.State), uptime(time.Since(st.Since)))
	// Not in BIG-IP's output, which keeps failover causes in its logs only.
	fmt.Fprintf(&b, "%-20s %d\n", "Failovers", st.Failovers)
	for _, c := range st.FailoverCauses {
		fmt.Fprintf(&b, "  %-18s %d\n", c.Cause, c.Count)
	}
	fmt.Fprintf(&b, "%-20s %d\n", "Heartbeats Sent", st.HeartbeatsSent)
	fmt.Fprintf(&b, "%-20s %d\n", "Heartbeats Received", st.HeartbeatsRecv)
	fmt.Fprintf(&b, "%-20s %d\n", "Heartbeats Lost", st.HeartbeatsLost)
	fmt.Fprintf(&b, "%-20s %d\n", "GARPs Sent", st.GARPsSent)
	_, err := io.WriteString(w, b.String())
	return err
}

// uptime prints a duration as BIG-IP does: 3d 18:36:17.
func uptime(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	return fmt.Sprintf("%dd %02d:%02d:%02d", s/86400, s%86400/3600, s%3600/60, s%60)
}

func showSyncStatus(w io.Writer, st FailoverStatus) error {
	var b strings.Builder
	header(&b, "CM::Sync Status", 44)
	color := syncColor(st.SyncStatus)
	fmt.Fprintf(&b, "Color    %s\n", color)
	fmt.Fprintf(&b, "Status   %s\n", st.SyncStatus)
	fmt.Fprintf(&b, "Summary  %s\n", st.SyncSummary)
	fmt.Fprintf(&b, "Details\n")
	if st.Group != "" {
		fmt.Fprintf(&b, "         %s: %s\n", st.Group, st.SyncStatus)
	}
	if st.Peer != "" {
		conn := "disconnected"
		if st.PeerAlive {
			conn = "connected"
		}
		fmt.Fprintf(&b, "         %s: %s\n", st.Peer, conn)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// MirrorKey is how the daemon decides whether a connection is mirrored: its protocol and
// original destination are those of a mirror-enabled virtual.
type MirrorKey struct {
	Protocol uint8
	Dest     netip.AddrPort
}

// showSysMirror prints the connection mirroring channel's state. BIG-IP has no single
// command for it; this is the appliance's own, in the same layout.
func showSysMirror(w io.Writer, st FailoverStatus) error {
	m := st.Mirror
	var b strings.Builder
	header(&b, "Sys::Mirror", 38)
	row := func(k string, v any) { fmt.Fprintf(&b, "%-20s %v\n", k, v) }
	row("Role", orNone(m.Role))
	row("Peer", orNone(m.Peer))
	row("Connected", map[bool]string{true: "yes", false: "no"}[m.Connected])
	switch m.Role {
	case "sender":
		row("Flows Sent", m.FlowsSent)
		row("Deletes Sent", m.DeletesSent)
		row("Full Syncs", m.Syncs)
		row("Queue Depth", m.QueueDepth)
		row("Queue Overflows", m.Overflows)
		row("Lag Last", lagText(m.LagLast))
		row("Lag Max (1 min)", lagText(m.LagMax))
		row("Digests Sent", m.DigestsSent)
		row("Resyncs Requested", m.ResyncsRequested)
	case "receiver":
		row("Mirrored Flows", m.FlowsHeld)
		row("Changes Applied", m.Applied)
		row("Inject Errors", m.InjectErrors)
		row("Stale Deleted", m.StaleDeleted)
		row("Full Syncs", m.Syncs)
		row("Digests Checked", m.DigestsChecked)
		row("Drift Detected", m.DriftDetected)
		row("Drift Repaired", m.Repairs)
		row("Last Digest Match", stamp(m.LastDigestMatch))
		row("Last Drift", stamp(m.LastDrift))
	}
	row("Event Overruns", m.Overruns)
	if !m.EntriesAt.IsZero() {
		// Counted by the last dump of the table, which a full sync, a digest or the
		// standby's check of its kernel makes.
		row("Entries Counted", stamp(m.EntriesAt))
		for _, e := range m.Entries {
			fmt.Fprintf(&b, "  %-4s %-13s %d\n", e.Protocol, orDash(e.State), e.Count)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// lagText prints a lag sample to the ten microseconds; none for no sample.
func lagText(d time.Duration) string {
	if d <= 0 {
		return "none"
	}
	return d.Round(10 * time.Microsecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format("Mon Jan _2 15:04:05 2006")
}
