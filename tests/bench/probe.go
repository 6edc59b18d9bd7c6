package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openappliance/appliance/tests/labnet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// probeInterval is how often a failover probe sends.
const probeInterval = 10 * time.Millisecond

// Probe is a flow that sends every probeInterval and notes when, after Arm, the first reply
// to something sent after Arm comes back: the flow works through the new active again.
type Probe interface {
	// Arm marks the failure at time at; the probe then waits for a reply to data sent
	// after the following Mark (called once the failed device's links are down, so that
	// nothing sent later can still pass through it).
	Arm(at time.Time)
	Mark()
	// Recovered returns how long after Arm that reply came, or ok=false.
	Recovered() (d time.Duration, ok bool)
	// Err is the probe's fatal error (a reset connection), if any.
	Err() error
	Key() TupleKey
	Close()
}

type probeState struct {
	mu        sync.Mutex
	armAt     time.Time
	armMark   int64 // bytes written (TCP) or last sequence sent (UDP) at Arm; -1 before
	recovered time.Time
	err       error
}

func (p *probeState) Arm(at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armAt, p.armMark, p.recovered = at, -1, time.Time{}
}

func (p *probeState) mark(mark int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armMark = mark
}

// seen records progress: mark is what has come back so far (bytes or a sequence number).
func (p *probeState) seen(mark int64, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armMark >= 0 && mark > p.armMark && p.recovered.IsZero() {
		p.recovered = at
	}
}

func (p *probeState) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *probeState) Recovered() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.recovered.IsZero() {
		return 0, false
	}
	return p.recovered.Sub(p.armAt), true
}

func (p *probeState) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// tcpProbe writes 64 bytes every probeInterval on a TCP connection to the virtual server
// and checks the echo.
type tcpProbe struct {
	probeState
	conn    net.Conn
	key     TupleKey
	written atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
}

// tcpPattern is the byte at offset i of probe id's stream.
func tcpPattern(id int, i int64) byte { return byte((int64(id)*131 + i*7 + i/251) % 251) }

func (p *tcpProbe) Key() TupleKey { return p.key }

func (p *tcpProbe) Mark() { p.mark(p.written.Load()) }

func (p *tcpProbe) run(id int) {
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(probeInterval)
		defer t.Stop()
		buf := make([]byte, 64)
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			off := p.written.Load()
			for i := range buf {
				buf[i] = tcpPattern(id, off+int64(i))
			}
			p.conn.SetWriteDeadline(time.Now().Add(time.Minute))
			n, err := p.conn.Write(buf)
			p.written.Add(int64(n))
			if err != nil {
				p.fail(fmt.Errorf("tcp probe %d write: %w", id, err))
				return
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 4096)
		var read int64
		for {
			p.conn.SetReadDeadline(time.Now().Add(time.Minute))
			n, err := p.conn.Read(buf)
			now := time.Now()
			for i := 0; i < n; i++ {
				if buf[i] != tcpPattern(id, read+int64(i)) {
					p.fail(fmt.Errorf("tcp probe %d: wrong byte at %d", id, read+int64(i)))
					return
				}
			}
			read += int64(n)
			if n > 0 {
				p.seen(read, now)
			}
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					p.fail(fmt.Errorf("tcp probe %d read: %w", id, err))
				}
				return
			}
		}
	}()
}

func (p *tcpProbe) Close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.conn.Close()
	p.wg.Wait()
}

// udpProbe sends a sequence number every probeInterval to the UDP virtual server and reads
// the echoes.
type udpProbe struct {
	probeState
	conn *net.UDPConn
	key  TupleKey
	seq  atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup
}

func (p *udpProbe) Key() TupleKey { return p.key }

func (p *udpProbe) Mark() { p.mark(p.seq.Load()) }

func (p *udpProbe) run() {
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(probeInterval)
		defer t.Stop()
		var buf [8]byte
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			binary.BigEndian.PutUint64(buf[:], uint64(p.seq.Add(1)))
			p.conn.Write(buf[:]) // errors (ICMP unreachable while nobody answers) are expected
		}
	}()
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 64)
		for {
			p.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := p.conn.Read(buf)
			now := time.Now()
			if n == 8 {
				p.seen(int64(binary.BigEndian.Uint64(buf)), now)
			}
			if err != nil {
				select {
				case <-p.stop:
					return
				default:
				}
				if errors.Is(err, net.ErrClosed) {
					return
				}
			}
		}
	}()
}

func (p *udpProbe) Close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.conn.Close()
	p.wg.Wait()
}

// OpenProbes opens nTCP TCP and nUDP UDP probes from the client to the virtual servers and
// starts them.
func OpenProbes(l *labnet.Lab, nTCP, nUDP int) ([]Probe, error) {
	var probes []Probe
	closeAll := func() {
		for _, p := range probes {
			p.Close()
		}
	}
	vip := net.ParseIP(labnet.VirtualIP)
	err := labnet.Do(l.Client, func() error {
		for i := 0; i < nTCP; i++ {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(labnet.VirtualIP, strconv.Itoa(TCPPort)), 5*time.Second)
			if err != nil {
				return fmt.Errorf("tcp probe: %w", err)
			}
			p := &tcpProbe{conn: c, stop: make(chan struct{}), key: connKey(6, c)}
			p.armMark = -1
			p.run(i)
			probes = append(probes, p)
		}
		for i := 0; i < nUDP; i++ {
			c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: vip, Port: UDPPort})
			if err != nil {
				return fmt.Errorf("udp probe: %w", err)
			}
			p := &udpProbe{conn: c, stop: make(chan struct{}), key: connKey(17, c)}
			p.armMark = -1
			p.run()
			probes = append(probes, p)
		}
		return nil
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	return probes, nil
}

func connKey(proto uint8, c net.Conn) TupleKey {
	return TupleKey{Proto: proto, Src: addrPortOf(c.LocalAddr()), Dst: addrPortOf(c.RemoteAddr())}
}

// addrPortOf returns a socket address as an unmapped netip.AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// AddrWatch reports when an address appears in a namespace (netlink address events).
type AddrWatch struct {
	done chan struct{}
	at   chan time.Time
	once sync.Once
}

// WatchAddr starts watching ns for addr being added; Wait returns the time it was.
func WatchAddr(ns, addr string) (*AddrWatch, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ch := make(chan netlink.AddrUpdate, 64)
	w := &AddrWatch{done: make(chan struct{}), at: make(chan time.Time, 1)}
	if err := netlink.AddrSubscribeWithOptions(ch, w.done, netlink.AddrSubscribeOptions{Namespace: &h}); err != nil {
		return nil, fmt.Errorf("address events in %s: %w", ns, err)
	}
	want := net.ParseIP(addr)
	go func() {
		for u := range ch {
			if u.NewAddr && u.LinkAddress.IP.Equal(want) {
				select {
				case w.at <- time.Now():
				default:
				}
			}
		}
	}()
	return w, nil
}

// Wait returns when the address came up, or ok=false after timeout or ctx's end.
func (w *AddrWatch) Wait(ctx context.Context, timeout time.Duration) (time.Time, bool) {
	select {
	case t := <-w.at:
		return t, true
	case <-ctx.Done():
	case <-time.After(timeout):
	}
	return time.Time{}, false
}

// Close ends the subscription.
func (w *AddrWatch) Close() { w.once.Do(func() { close(w.done) }) }
