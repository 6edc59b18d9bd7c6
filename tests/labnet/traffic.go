package labnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// EchoServer echoes every byte back on each address it listens on.
type EchoServer struct {
	listeners []net.Listener
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]bool
}

// ListenEcho starts echo servers on addrs; listen opens each listener (so that a caller can
// open them inside a namespace with Do).
func ListenEcho(addrs []string, listen func(addr string) (net.Listener, error)) (*EchoServer, error) {
	s := &EchoServer{conns: map[net.Conn]bool{}}
	for _, a := range addrs {
		ln, err := listen(a)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("echo server on %s: %w", a, err)
		}
		s.listeners = append(s.listeners, ln)
		s.wg.Add(1)
		go s.serve(ln)
	}
	return s, nil
}

func (s *EchoServer) serve(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			io.Copy(c, c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops the listeners and the open connections and waits for every goroutine.
func (s *EchoServer) Close() {
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Flow is one long-lived client connection that writes a known byte sequence in small
// chunks at a steady pace and checks that every byte comes back, in order.
type Flow struct {
	ID      int
	conn    net.Conn
	written atomic.Int64
	read    atomic.Int64
	errMu   sync.Mutex
	err     error
	stop    chan struct{}
	wg      sync.WaitGroup
}

// pattern is the byte the flow sends at offset i: distinct per flow, so a crossed
// connection shows up as a mismatch.
func pattern(id int, i int64) byte { return byte((int64(id)*131 + i*7 + i/251) % 251) }

// Dial opens n flows to target; dial opens one connection (inside a namespace with Do).
func Dial(n int, dial func() (net.Conn, error)) ([]*Flow, error) {
	var flows []*Flow
	for i := 0; i < n; i++ {
		c, err := dial()
		if err != nil {
			for _, f := range flows {
				f.conn.Close()
			}
			return nil, fmt.Errorf("dial flow %d: %w", i, err)
		}
		flows = append(flows, &Flow{ID: i, conn: c, stop: make(chan struct{})})
	}
	return flows, nil
}

// Start begins sending chunk bytes every interval and checking the echo.
func (f *Flow) Start(chunk int, interval time.Duration) {
	f.wg.Add(2)
	go f.writeLoop(chunk, interval)
	go f.readLoop()
}

func (f *Flow) fail(err error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// Err is the flow's first error: a reset, a timeout, or a wrong byte.
func (f *Flow) Err() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.err
}

// Written and Read count bytes sent and bytes echoed back correctly.
func (f *Flow) Written() int64 { return f.written.Load() }
func (f *Flow) Read() int64    { return f.read.Load() }

func (f *Flow) writeLoop(chunk int, interval time.Duration) {
	defer f.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	buf := make([]byte, chunk)
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		off := f.written.Load()
		for i := range buf {
			buf[i] = pattern(f.ID, off+int64(i))
		}
		f.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		n, err := f.conn.Write(buf)
		f.written.Add(int64(n))
		if err != nil {
			f.fail(fmt.Errorf("flow %d write: %w", f.ID, err))
			return
		}
	}
}

func (f *Flow) readLoop() {
	defer f.wg.Done()
	buf := make([]byte, 4096)
	for {
		f.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := f.conn.Read(buf)
		off := f.read.Load()
		for i := 0; i < n; i++ {
			if buf[i] != pattern(f.ID, off+int64(i)) {
				f.fail(fmt.Errorf("flow %d: byte %d is %d, want %d (lost or reordered data)", f.ID, off+int64(i), buf[i], pattern(f.ID, off+int64(i))))
				return
			}
		}
		f.read.Add(int64(n))
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.fail(fmt.Errorf("flow %d read: %w", f.ID, err))
			}
			return
		}
	}
}

// StopWriting stops the writer; the reader goes on until Close.
func (f *Flow) StopWriting() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
}

// Drained reports whether every written byte has come back.
func (f *Flow) Drained() bool { return f.read.Load() == f.written.Load() }

// Close closes the connection and waits for the flow's goroutines.
func (f *Flow) Close() {
	f.StopWriting()
	f.conn.Close()
	f.wg.Wait()
}

// Outcome of a set of flows after a failover.
type Outcome struct {
	Kept   int
	Total  int
	Errors []error
}

// Settle stops writing, waits (until ctx ends) for every flow to drain or fail, and counts
// the flows kept: no error and every byte echoed back.
func Settle(ctx context.Context, flows []*Flow) Outcome {
	for _, f := range flows {
		f.StopWriting()
	}
	for {
		pending := 0
		for _, f := range flows {
			if f.Err() == nil && !f.Drained() {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	out := Outcome{Total: len(flows)}
	for _, f := range flows {
		switch {
		case f.Err() != nil:
			out.Errors = append(out.Errors, f.Err())
		case !f.Drained():
			out.Errors = append(out.Errors, fmt.Errorf("flow %d: %d of %d bytes came back", f.ID, f.Read(), f.Written()))
		default:
			out.Kept++
		}
	}
	return out
}
