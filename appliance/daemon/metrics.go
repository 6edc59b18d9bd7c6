package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openappliance/appliance/ha/failover"
	"github.com/openappliance/appliance/ha/mirror"
)

// Collector exports the daemon's figures to Prometheus. Values are read at scrape time
// from the components that keep them, so there is no second copy to drift.
type Collector struct{ d *Daemon }

// Collector returns the daemon's Prometheus collector.
func (d *Daemon) Collector() prometheus.Collector { return Collector{d} }

var (
	descState          = prometheus.NewDesc("appliance_failover_state", "1 for the device's current failover state.", []string{"state"}, nil)
	descFailovers      = prometheus.NewDesc("appliance_failovers_total", "Changes into or out of Active, by cause: no_peer, peer_lost, peer_offline, peer_yielded, tie_break (going Active), forced, split_brain (going Standby).", []string{"cause"}, nil)
	descTransitions    = prometheus.NewDesc("appliance_failover_transitions_total", "Transitions into a state, by state.", []string{"to"}, nil)
	descPeerAlive      = prometheus.NewDesc("appliance_peer_alive", "1 when the peer's heartbeats arrive within failover.nettimeout.", nil, nil)
	descHBSent         = prometheus.NewDesc("appliance_heartbeats_sent_total", "Heartbeat datagrams sent.", nil, nil)
	descHBRecv         = prometheus.NewDesc("appliance_heartbeats_received_total", "Heartbeats accepted from the peer.", nil, nil)
	descHBMissed       = prometheus.NewDesc("appliance_heartbeats_missed_total", "Gaps in the peer's heartbeat sequence: heartbeats lost or late.", nil, nil)
	descGARP           = prometheus.NewDesc("appliance_garp_sent_total", "Gratuitous ARP and unsolicited neighbour advertisement packets sent.", nil, nil)
	descOverruns       = prometheus.NewDesc("appliance_conntrack_event_overruns_total", "Conntrack event socket overruns (each repaired by a full resync).", nil, nil)
	descMirrorConn     = prometheus.NewDesc("appliance_mirror_connected", "1 when the mirror channel to or from the peer is up.", []string{"role"}, nil)
	descMirrorSent     = prometheus.NewDesc("appliance_mirror_flows_sent_total", "Mirrored flow upserts sent to the peer, full syncs included.", nil, nil)
	descMirrorDeletes  = prometheus.NewDesc("appliance_mirror_deletes_sent_total", "Mirrored flow deletes sent to the peer.", nil, nil)
	descMirrorSyncs    = prometheus.NewDesc("appliance_mirror_syncs_total", "Full table syncs completed.", []string{"role"}, nil)
	descMirrorQueue    = prometheus.NewDesc("appliance_mirror_queue_depth", "Distinct flows waiting to be sent to the peer.", nil, nil)
	descMirrorOverflow = prometheus.NewDesc("appliance_mirror_queue_overflows_total", "Times the send queue overflowed and was replaced by a full sync.", nil, nil)
	descMirrorHeld     = prometheus.NewDesc("appliance_mirror_flows", "Mirrored flows the standby holds.", nil, nil)
	descMirrorApplied  = prometheus.NewDesc("appliance_mirror_applied_total", "Mirrored changes applied to the standby's kernel.", nil, nil)
	descMirrorErrors   = prometheus.NewDesc("appliance_mirror_inject_errors_total", "Mirrored flows the standby's kernel refused.", nil, nil)
	descMirrorStale    = prometheus.NewDesc("appliance_mirror_stale_deleted_total", "Stale or stray flows removed from the standby.", nil, nil)
	descDigests        = prometheus.NewDesc("appliance_mirror_digests_total", "Table digests sent (sender) or checked (receiver).", []string{"role"}, nil)
	descDrift          = prometheus.NewDesc("appliance_mirror_drift_detected_total", "Times the standby's table was found to differ from the active's.", nil, nil)
	descRepairs        = prometheus.NewDesc("appliance_mirror_drift_repaired_total", "Drifts repaired by a full sync.", nil, nil)
	descResyncReqs     = prometheus.NewDesc("appliance_mirror_resyncs_requested_total", "Full syncs requested by the standby.", []string{"role"}, nil)
	descTickled        = prometheus.NewDesc("appliance_tickled_connections_total", "TCP connections tickled after a takeover, to resume without waiting for their retransmission back-off.", nil, nil)
	descMirrorEntries  = prometheus.NewDesc("appliance_mirror_entries", "Mirrored entries in this device's kernel, by protocol and TCP state (none for UDP), as counted by the last dump of the table (full sync, digest or kernel check).", []string{"protocol", "state"}, nil)
	descMirrorLag      = prometheus.NewDesc("appliance_mirror_lag_seconds", "Mirror lag samples: from the active queueing a change to the standby's kernel holding it, as the standby confirms (one trip back included).", nil, nil)
	descTickleAnswers  = prometheus.NewDesc("appliance_tickle_answers_total", "Connection endpoints that answered a tickle's probe (two per connection when all do).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descFailovers, descTransitions, descPeerAlive, descHBSent, descHBRecv,
		descHBMissed, descGARP, descOverruns, descMirrorConn, descMirrorSent, descMirrorDeletes, descMirrorSyncs,
		descMirrorQueue, descMirrorOverflow, descMirrorHeld, descMirrorApplied, descMirrorErrors, descMirrorStale,
		descDigests, descDrift, descRepairs, descResyncReqs, descTickled, descTickleAnswers, descMirrorLag, descMirrorEntries} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c Collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	boolean := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	d.mu.Lock()
	fsm := d.fsm
	d.mu.Unlock()
	if fsm != nil {
		st := fsm.Status()
		for _, s := range []string{"Offline", "Standby", "Active"} {
			gauge(descState, boolean(st.State.String() == s), s)
		}
		for _, c := range failover.FailoverCauses() {
			counter(descFailovers, st.FailoversByCause[c], c.String())
		}
		gauge(descPeerAlive, boolean(st.PeerAlive))
		counter(descHBSent, st.HeartbeatsSent)
		counter(descHBRecv, st.HeartbeatsReceived)
		counter(descHBMissed, st.HeartbeatsMissed)
	}
	counter(descTransitions, d.toActive.Load(), "Active")
	counter(descTransitions, d.toStandby.Load(), "Standby")
	counter(descTickled, d.tickled.Load())
	counter(descTickleAnswers, d.tickleAns.Load())
	counter(descGARP, d.announcer.Sent())
	counter(descOverruns, d.overruns.Load())
	if c := d.entries.Load(); c != nil {
		for _, r := range c.metricRows() {
			gauge(descMirrorEntries, float64(r.Count), r.Protocol, metricState(r))
		}
	}
	d.roles.statsMu.Lock()
	sender, receiver := d.roles.sender, d.roles.receiver
	d.roles.statsMu.Unlock()
	if sender != nil {
		ss := sender.Stats()
		gauge(descMirrorConn, boolean(ss.Connected), "sender")
		counter(descMirrorSent, ss.FlowsSent)
		counter(descMirrorDeletes, ss.DeletesSent)
		counter(descMirrorSyncs, ss.Syncs, "sender")
		gauge(descMirrorQueue, float64(ss.QueueLen))
		counter(descMirrorOverflow, ss.Overflows)
		counter(descDigests, ss.DigestsSent, "sender")
		counter(descResyncReqs, ss.ResyncsRequested, "sender")
		buckets := make(map[float64]uint64, len(ss.LagBuckets))
		for i, le := range mirror.LagBounds() {
			buckets[le.Seconds()] = ss.LagBuckets[i]
		}
		ch <- prometheus.MustNewConstHistogram(descMirrorLag, ss.LagSamples, ss.LagSum.Seconds(), buckets)
	}
	if receiver != nil {
		rs := receiver.Stats()
		gauge(descMirrorConn, boolean(rs.Connected), "receiver")
		gauge(descMirrorHeld, float64(rs.Flows))
		counter(descMirrorApplied, rs.Applied)
		counter(descMirrorErrors, rs.InjectErrors)
		counter(descMirrorStale, rs.StaleDeleted+rs.StrayDeleted)
		counter(descDigests, rs.DigestsChecked, "receiver")
		counter(descDrift, rs.DriftDetected)
		counter(descRepairs, rs.Repairs)
		counter(descResyncReqs, rs.ResyncsRequested, "receiver")
		counter(descMirrorSyncs, rs.Syncs, "receiver")
	}
}
