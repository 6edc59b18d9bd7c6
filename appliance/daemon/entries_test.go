package daemon

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/openappliance/appliance/appliance/tmsh"
	"github.com/openappliance/appliance/kernel/conntrack"
)

func TestEntryCounts(t *testing.T) {
	tcp := func(state uint8) conntrack.Flow { return conntrack.Flow{Proto: unix.IPPROTO_TCP, TCPState: state} }
	udp := conntrack.Flow{Proto: unix.IPPROTO_UDP}
	tests := []struct {
		name          string
		flows         []conntrack.Flow
		rows, metrics []tmsh.EntryCount
	}{
		{name: "empty", metrics: []tmsh.EntryCount{{Protocol: "tcp", State: "ESTABLISHED"}, {Protocol: "udp"}}},
		{
			name:  "states in the kernel's order, then udp",
			flows: []conntrack.Flow{tcp(7), udp, tcp(3), tcp(3), tcp(42), udp, {Proto: unix.IPPROTO_SCTP}},
			rows: []tmsh.EntryCount{{Protocol: "tcp", State: "ESTABLISHED", Count: 2}, {Protocol: "tcp", State: "TIME_WAIT", Count: 1},
				{Protocol: "tcp", State: "OTHER", Count: 1}, {Protocol: "udp", Count: 2}},
		},
		{
			name:    "no established: a zero row for the metrics",
			flows:   []conntrack.Flow{tcp(8)},
			rows:    []tmsh.EntryCount{{Protocol: "tcp", State: "CLOSE", Count: 1}},
			metrics: []tmsh.EntryCount{{Protocol: "tcp", State: "CLOSE", Count: 1}, {Protocol: "tcp", State: "ESTABLISHED"}, {Protocol: "udp"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c entryCounts
			for _, f := range tt.flows {
				c.add(f)
			}
			if diff := cmp.Diff(tt.rows, c.rows()); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
			want := tt.metrics
			if want == nil {
				want = tt.rows
			}
			if diff := cmp.Diff(want, c.metricRows()); diff != "" {
				t.Errorf("metric rows (-want +got):\n%s", diff)
			}
		})
	}
}
