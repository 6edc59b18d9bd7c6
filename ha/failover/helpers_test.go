package failover

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// bound is the safety bound of every wait: generous, since it only ends a test that hangs.
const bound = 10 * time.Second

// call is one hook call recorded.
type call struct {
	To     State
	Reason string
}

// recorder is a fake Hooks that records the calls; failActive makes that many
// BecomeActive calls fail.
type recorder struct {
	mu         sync.Mutex
	calls      []call
	failActive int
}

func (r *recorder) BecomeActive(_ context.Context, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{StateActive, reason})
	if r.failActive > 0 {
		r.failActive--
		return errors.New("fake: cannot add the floating addresses")
	}
	return nil
}

func (r *recorder) BecomeStandby(_ context.Context, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{StateStandby, reason})
	return nil
}

func (r *recorder) Calls() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// kinds is the sequence of hook calls with each reason cut to its first words, for
// comparing without the details.
func kinds(calls []call) []string {
	var out []string
	for _, c := range calls {
		reason, _, _ := strings.Cut(c.Reason, ":")
		out = append(out, c.To.String()+": "+reason)
	}
	return out
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// waitFor polls cond until it holds, failing the test after the safety bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// freeAddr returns ip with a UDP port that was free a moment ago.
func freeAddr(t *testing.T, ip string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// listenUDP binds a socket for the test to play a peer with.
func listenUDP(t *testing.T, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// start runs m until the returned stop is called (by the test, or at cleanup) and checks
// that Run returns within the bound.
func start(t *testing.T, m *Machine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(bound):
				t.Errorf("Run did not return within %s of its context ending", bound)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// settled reports whether no hook call is in flight.
func (m *Machine) settled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.pending
}

type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	tickers chan *fakeTicker
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), tickers: make(chan *fakeTicker, 1)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) NewTicker(d time.Duration) ticker {
	tk := &fakeTicker{c: make(chan time.Time), d: d}
	c.tickers <- tk
	return tk
}

// fakeTicker ticks when the test says; its channel is unbuffered, so a tick that has been
// sent has been taken by the loop, and a second one is taken only once the first is handled.
type fakeTicker struct {
	c  chan time.Time
	mu sync.Mutex
	d  time.Duration
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }
func (t *fakeTicker) Stop()               {}
func (t *fakeTicker) Reset(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.d = d
}
func (t *fakeTicker) interval() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.d
}

func (m *Machine) cfgSnapshot() Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}
