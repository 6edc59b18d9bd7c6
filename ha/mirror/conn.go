package mirror

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Timing of the stream. The Sender writes a Keepalive whenever it has been idle for
// keepaliveInterval; the Receiver drops a connection that has been silent for readTimeout, and the
// Sender's kernel drops one whose data has gone unacknowledged for userTimeout (TCP_USER_TIMEOUT,
// RFC 5482), which is how the Sender notices a dead peer: its own writes fit in the socket buffer
// and would not fail for a long time otherwise.
const (
	keepaliveInterval = time.Second
	readTimeout       = 4 * keepaliveInterval
	writeTimeout      = 5 * time.Second
	userTimeout       = 5 * time.Second
	bindRetry         = time.Second

	bufSize = 64 << 10 // bufio size on both ends: one syscall per ~1,700 IPv4 upserts
)

// tcpKeepAlive probes an idle connection at the TCP level as well, for the Sender's read side.
func tcpKeepAlive() net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: time.Second, Count: 3}
}

// setUserTimeout is a net.Dialer / net.ListenConfig Control function that sets TCP_USER_TIMEOUT.
func setUserTimeout(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(userTimeout/time.Millisecond))
	})
	if err != nil {
		return err
	}
	return serr
}

// tuneConn sets TCP_NODELAY: frames are batched in a bufio.Writer and flushed when the queue runs
// empty, so Nagle's algorithm would only add delay.
func tuneConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}

// deadlineReader sets a read deadline before every read of the underlying connection. Behind a
// bufio.Reader that is one deadline per buffer fill, not one per frame. Another goroutine can
// interrupt a read in progress (or the next one) with wake; the read then returns errWoken,
// and the bufio.Reader keeps what it had buffered, so reading can go on after it.
type deadlineReader struct {
	c       net.Conn
	timeout time.Duration
	woken   atomic.Bool
	io      quietIO
}

// errWoken is what a read returns after deadlineReader.wake; it never leaves the Receiver.
var errWoken = errors.New("read interrupted")

func (d *deadlineReader) Read(p []byte) (int, error) {
	if err := d.c.SetReadDeadline(time.Now().Add(d.timeout)); err != nil {
		return 0, err
	}
	// Checked after setting the deadline: a wake that came before it is seen here, and one that
	// comes after it moves the deadline to the past.
	if d.woken.Swap(false) {
		return 0, errWoken
	}
	n, err := d.io.read(d.c, p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && d.woken.Swap(false) {
		return n, errWoken
	}
	return n, err
}

// wake interrupts the read in progress, or else the next one. Safe for concurrent use.
func (d *deadlineReader) wake() {
	d.woken.Store(true)
	_ = d.c.SetReadDeadline(time.Now())
}

// deadlineWriter sets a write deadline before every write of the underlying connection (one per
// bufio flush), so that a peer that stops reading cannot block the Sender for ever. With
// noWait set (Sender.Flush's writes on the producer's goroutine) a write never waits: what
// the socket does not take at once is kept, and the next write that may wait (or drain)
// writes it first.
type deadlineWriter struct {
	c       net.Conn
	timeout time.Duration
	io      quietIO
	noWait  bool
	spill   []byte
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if d.noWait {
		n := 0
		if len(d.spill) == 0 {
			var err error
			if n, err = d.io.tryWrite(d.c, p); err != nil {
				return n, err
			}
		}
		d.spill = append(d.spill, p[n:]...)
		return len(p), nil
	}
	if err := d.drain(); err != nil {
		return 0, err
	}
	if err := d.c.SetWriteDeadline(time.Now().Add(d.timeout)); err != nil {
		return 0, err
	}
	return d.io.write(d.c, p)
}

// drain writes what writes that could not wait have kept, waiting as Write does.
func (d *deadlineWriter) drain() error {
	if len(d.spill) == 0 {
		return nil
	}
	err := d.c.SetWriteDeadline(time.Now().Add(d.timeout))
	if err == nil {
		_, err = d.io.write(d.c, d.spill)
	}
	d.spill = d.spill[:0] // after an error too: the connection is done for
	return err
}

// canSkipWait says whether the connection is a socket, which a noWait write needs.
func (d *deadlineWriter) canSkipWait() bool { return d.io.use(d.c) }

// quietIO reads or writes a TCP connection, whose socket never blocks (the runtime's poller
// waits for it, honouring the deadlines), with quiet system calls: they go around the
// runtime's syscall bookkeeping, which wakes its monitor thread (sysmon) when it sleeps, to
// poll every 20 µs while the call's burst of work lasts. With a burst every millisecond
// under load, that was a sixth of each daemon's CPU time in the lab. A quiet call holds its
// processor to the end, which a read or write that does not block keeps short. Connections
// without a socket (net.Pipe, in tests) are read and written as usual. The zero quietIO is
// ready; it is for one goroutine at a time.
type quietIO struct {
	rc      syscall.RawConn // of the connection last used, cached: getting one allocates
	of      net.Conn
	buf     []byte
	n       int
	err     error
	ioFn    func(fd uintptr) bool
	tryFn   func(fd uintptr)
	writing bool
}

func (q *quietIO) read(c net.Conn, p []byte) (int, error) {
	if !q.use(c) {
		return c.Read(p)
	}
	n, err := q.run(p, false)
	if err == nil && n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, err
}

func (q *quietIO) write(c net.Conn, p []byte) (int, error) {
	if !q.use(c) {
		return c.Write(p)
	}
	return q.run(p, true)
}

// tryWrite writes as much of p as the socket takes without waiting; use must have said
// that c has a socket.
func (q *quietIO) tryWrite(c net.Conn, p []byte) (int, error) {
	if !q.use(c) {
		return 0, errors.New("write without waiting: not a socket")
	}
	q.buf, q.n, q.err, q.writing = p, 0, nil, true
	return q.result("write", q.rc.Control(q.tryFn))
}

// run reads into p, or writes all of it, through the connection's poller.
func (q *quietIO) run(p []byte, writing bool) (int, error) {
	q.buf, q.n, q.err, q.writing = p, 0, nil, writing
	if writing {
		return q.result("write", q.rc.Write(q.ioFn))
	}
	return q.result("read", q.rc.Read(q.ioFn))
}

// result returns what the call through the RawConn did, given its error, and lets go of
// the buffer.
func (q *quietIO) result(op string, err error) (int, error) {
	n := q.n
	q.buf = nil
	switch {
	case err != nil:
		return n, err
	case q.err != nil:
		return n, os.NewSyscallError(op, q.err)
	}
	return n, nil
}

// use readies q for c and says whether c has a socket to use.
func (q *quietIO) use(c net.Conn) bool {
	if q.of != c {
		q.of, q.rc = c, nil
		if sc, ok := c.(syscall.Conn); ok {
			q.rc, _ = sc.SyscallConn()
		}
		q.ioFn = q.do
		q.tryFn = func(fd uintptr) { q.do(fd) }
	}
	return q.rc != nil
}

// do is q.ioFn: a read that returns what is there, or a write of all of q.buf, returning false
// (wait until ready) when the socket would block.
func (q *quietIO) do(fd uintptr) bool {
	trap := uintptr(unix.SYS_READ)
	if q.writing {
		trap = unix.SYS_WRITE
	}
	for {
		var p unsafe.Pointer
		if len(q.buf) > 0 {
			p = unsafe.Pointer(&q.buf[0])
		}
		r, _, errno := unix.RawSyscall(trap, fd, uintptr(p), uintptr(len(q.buf)))
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			q.err = errno
			return true
		}
		q.n += int(r)
		if !q.writing || int(r) == len(q.buf) {
			return true
		}
		q.buf = q.buf[r:]
	}
}

// sleepCtx waits for d or for ctx to end; it reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
