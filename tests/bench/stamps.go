package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	ctlib "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/openappliance/appliance/tests/labnet"
)

// kernelStamps learns when a namespace's kernel created each entry of one virtual server,
// from the kernel's own clock: with net.netfilter.nf_conntrack_timestamp on, an entry
// carries its creation time (taken when the kernel confirms it, or when ctnetlink creates
// it), and ctnetlink reports it in the entry's destroy event and in dumps. So the lag from an
// entry's creation on the active to its injection on the standby is the difference of two
// kernel stamps, whatever the scheduling of the processes that read them. (A watcher that
// stamped new-entry events as it read them measured its own wake-ups too: on this machine
// kind its reading moved the lag's p99 by a millisecond, and at real-time priority it took a
// third of a core at 30k events/s from the daemons it measured.)
//
// It reads the entries destroyed while it runs (the fed entries expire within the run) with
// ti-mo/conntrack, not the product's own conntrack code, and dumps the ones left at stop.
// Reading late costs nothing but receive buffer, so it runs at normal priority.
type kernelStamps struct {
	ns     string
	proto  uint8
	dst    netip.AddrPort
	conn   *ctlib.Conn
	events chan ctlib.Event
	errs   chan error
	quit   chan struct{} // closed once the socket is closed and its worker has ended
	done   chan struct{} // closed when the reader has ended
	mu     sync.Mutex
	at     map[TupleKey]time.Time
	last   time.Time // when the reader last took an event
	err    error     // the listener's end, if it ended early (events then lost)
}

// timestampSysctl turns the kernel's conntrack timestamps on and off; stop turns them off
// again, so that the sections after the lag's (the full syncs) run as they would without.
const timestampSysctl = "net.netfilter.nf_conntrack_timestamp"

// stampsBuffer is the event socket's receive buffer: a full feed's worth of destroy events
// (the kernel's garbage collector finds tens of thousands at once).
const stampsBuffer = 256 << 20

// watchStamps turns on the namespace's conntrack timestamps and starts reading destroy
// events of entries of proto to dst. Entries created before it have no stamp.
func watchStamps(ns string, proto uint8, dst netip.AddrPort) (*kernelStamps, error) {
	if err := setSysctl(ns, timestampSysctl, "1"); err != nil {
		return nil, err
	}
	s := &kernelStamps{
		ns: ns, proto: proto, dst: dst,
		events: make(chan ctlib.Event, 1024),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		at:     map[TupleKey]time.Time{},
	}
	conn, err := dialIn(ns)
	if err == nil {
		s.conn = conn
		if err = conn.SetReadBuffer(stampsBuffer); err != nil {
			err = fmt.Errorf("conntrack socket in %s: receive buffer: %w", ns, err)
		}
	}
	if err == nil {
		s.errs, err = conn.Listen(s.events, 1, []netfilter.NetlinkGroup{netfilter.GroupCTDestroy})
		if err != nil {
			err = fmt.Errorf("conntrack destroy events in %s: %w", ns, err)
		}
	}
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, errors.Join(err, setSysctl(ns, timestampSysctl, "0"))
	}
	go s.read()
	return s, nil
}

func dialIn(ns string) (conn *ctlib.Conn, err error) {
	err = labnet.Do(ns, func() error {
		conn, err = ctlib.Dial(nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("conntrack socket in %s: %w", ns, err)
	}
	return conn, nil
}

// read records the stamps of destroyed entries until stop has closed the socket. It keeps
// taking events and errors until then, since the listener's worker blocks on sending them
// and closing the socket waits for the worker.
func (s *kernelStamps) read() {
	defer close(s.done)
	for {
		select {
		case ev := <-s.events:
			s.record(ev.Flow, true)
		case err := <-s.errs: // the worker has ended: an overrun, most likely
			s.mu.Lock()
			s.err = errors.Join(s.err, err)
			s.mu.Unlock()
		case <-s.quit:
			for {
				select {
				case ev := <-s.events:
					s.record(ev.Flow, true)
				default:
					return
				}
			}
		}
	}
}

func (s *kernelStamps) record(f *ctlib.Flow, event bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if event {
		s.last = time.Now()
	}
	if f == nil || f.TupleOrig.Proto.Protocol != s.proto || f.Timestamp.Start.IsZero() {
		return
	}
	dst := netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort)
	if dst != s.dst {
		return
	}
	src := netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress, f.TupleOrig.Proto.SourcePort)
	key := TupleKey{Proto: s.proto, Src: src, Dst: dst}
	// An entry deleted and made again counts from its first creation: the one the lag is
	// about. Dumped entries may be recorded before older destroys the reader has yet to take.
	if old, seen := s.at[key]; !seen || f.Timestamp.Start.Before(old) {
		s.at[key] = f.Timestamp.Start
	}
}

// stampsQuiet is how long stop waits for the destroy events to pause before and after its
// dump: the events of entries destroyed before the dump are queued on the socket by then,
// and those destroyed after it are in the dump.
const stampsQuiet = 200 * time.Millisecond

// stop dumps the entries still in the table, reads the destroy events still queued, and
// returns every stamp seen. An error says events were lost: the map then lacks their entries.
func (s *kernelStamps) stop() (map[TupleKey]time.Time, error) {
	s.waitQuiet()
	var errs []error
	if conn, err := dialIn(s.ns); err != nil {
		errs = append(errs, err)
	} else {
		flows, err := conn.Dump(nil)
		conn.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("dump conntrack in %s: %w", s.ns, err))
		}
		for i := range flows {
			s.record(&flows[i], false)
		}
	}
	s.waitQuiet()
	errs = append(errs, s.conn.Close()) // the reader keeps the worker unblocked meanwhile
	errs = append(errs, setSysctl(s.ns, timestampSysctl, "0"))
	close(s.quit)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		errs = append(errs, fmt.Errorf("conntrack destroy events in %s: %w", s.ns, s.err))
	}
	return s.at, errors.Join(errs...)
}

// waitQuiet waits until no event has come for stampsQuiet, at most 10 s.
func (s *kernelStamps) waitQuiet() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		idle := time.Since(s.last)
		s.mu.Unlock()
		if idle >= stampsQuiet {
			return
		}
		time.Sleep(stampsQuiet - idle)
	}
}
