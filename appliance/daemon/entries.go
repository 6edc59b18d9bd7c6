package daemon

import (
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openappliance/appliance/appliance/tmsh"
	"github.com/openappliance/appliance/kernel/conntrack"
)

// tcpStateNames are the kernel's TCP conntrack states (enum tcp_conntrack), as conntrack -L
// and show sys connection print them.
var tcpStateNames = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

// entryCounts counts the mirrored entries of the kernel's table by protocol and TCP state.
// Counting a table of a million entries apart would cost a dump of its own; the dumps made
// anyway (the active's full syncs and digests, the standby's kernel checks: every digest
// interval) count them on the way.
type entryCounts struct {
	at  time.Time                   // when the dump that counted them ended
	tcp [len(tcpStateNames) + 1]int // by state; the last for a state this table does not name
	udp int
}

func (c *entryCounts) add(f conntrack.Flow) {
	switch f.Proto {
	case unix.IPPROTO_TCP:
		c.tcp[min(int(f.TCPState), len(tcpStateNames))]++
	case unix.IPPROTO_UDP:
		c.udp++
	}
}

// rows returns the non-zero counts in a fixed order: TCP by state, then UDP.
func (c *entryCounts) rows() []tmsh.EntryCount {
	var out []tmsh.EntryCount
	for s, n := range c.tcp {
		if n == 0 {
			continue
		}
		name := "OTHER"
		if s < len(tcpStateNames) {
			name = tcpStateNames[s]
		}
		out = append(out, tmsh.EntryCount{Protocol: "tcp", State: name, Count: n})
	}
	if c.udp > 0 {
		out = append(out, tmsh.EntryCount{Protocol: "udp", Count: c.udp})
	}
	return out
}

// metricRows is rows with TCP ESTABLISHED and UDP always present, zero or not, so that
// their series do not vanish from the metrics when the table empties.
func (c *entryCounts) metricRows() []tmsh.EntryCount {
	rows := c.rows()
	if c.tcp[conntrack.TCPStateEstablished] == 0 {
		rows = append(rows, tmsh.EntryCount{Protocol: "tcp", State: tcpStateNames[conntrack.TCPStateEstablished]})
	}
	if c.udp == 0 {
		rows = append(rows, tmsh.EntryCount{Protocol: "udp"})
	}
	return rows
}

// metricState is a row's state as a Prometheus label: lower case, "none" for UDP.
func metricState(r tmsh.EntryCount) string {
	if r.State == "" {
		return "none"
	}
	return strings.ToLower(r.State)
}

func tcpStateName(f conntrack.Flow) string {
	if f.Proto != unix.IPPROTO_TCP {
		return ""
	}
	if int(f.TCPState) < len(tcpStateNames) {
		return tcpStateNames[f.TCPState]
	}
	return strconv.Itoa(int(f.TCPState))
}
