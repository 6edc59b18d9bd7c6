package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// EventType says what happened to an entry.
type EventType uint8

// Event types. EventOverrun is not about one entry: the kernel dropped events.
const (
	EventNew EventType = iota + 1
	EventUpdate
	EventDestroy
	EventOverrun
)

// String returns "new", "update", "destroy" or "overrun".
func (t EventType) String() string {
	switch t {
	case EventNew:
		return "new"
	case EventUpdate:
		return "update"
	case EventDestroy:
		return "destroy"
	case EventOverrun:
		return "overrun"
	default:
		return fmt.Sprintf("event-%d", uint8(t))
	}
}

// Event is a change in the table. EventOverrun carries no Flow: events were lost (ENOBUFS)
// and the caller must re-dump.
type Event struct {
	Type EventType
	Flow Flow
	// PortID is the netlink port id of the socket whose request made the change, as
	// the kernel puts it in the event's header (ctnetlink_conntrack_event), or 0 when
	// packets, timeouts or the kernel itself made it. Compare it with Table.PortID to
	// ignore the events of one's own Inject and Delete calls.
	PortID uint32
}

// Netfilter multicast groups of conntrack events (enum nfnetlink_groups).
const (
	groupCTNew     = 1 // NFNLGRP_CONNTRACK_NEW
	groupCTUpdate  = 2 // NFNLGRP_CONNTRACK_UPDATE
	groupCTDestroy = 3 // NFNLGRP_CONNTRACK_DESTROY
)

// Listener receives conntrack events (new, update, destroy) of IPv4/IPv6 TCP/UDP entries
// of its namespace: the one current when NewListener was called. It reads its own netlink
// socket in its own loop rather than ti-mo/conntrack's Listen, whose workers stop at the
// first receive error, ENOBUFS included (DESIGN fact 8).
//
// The socket is kept out of the Go runtime's poller (openNetfilterSocket), and Run waits
// for it itself (readyWaiter): else every event arriving while Run lingers (SetLinger)
// would wake the poller's thread for nothing, under load at nearly every event, which in
// the lab was a quarter of the active daemon's CPU time.
//
// A Listener is used by one Run; Close may be called from any goroutine, at any time.
type Listener struct {
	sock   *os.File // the netlink socket, blocking: os.NewFile leaves it out of the poller
	wake   *os.File // an eventfd that Close and Run's context write to end wait
	linger time.Duration
	// burstDone, when set, runs at the end of each burst of events (SetBurstDone).
	burstDone func()

	running   atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// NewListener subscribes to the conntrack event groups in the calling thread's network
// namespace. Events are queued in the socket from then on, before Run is called. When
// bufBytes > 0 the socket's receive buffer is set to bufBytes with SO_RCVBUFFORCE (which
// needs CAP_NET_ADMIN and ignores net.core.rmem_max), falling back to SO_RCVBUF (capped by
// rmem_max); the kernel doubles the value and enforces a small minimum.
func NewListener(bufBytes int) (*Listener, error) {
	return NewListenerOf(bufBytes, EventNew, EventUpdate, EventDestroy)
}

// NewListenerOf is NewListener for the events of the given types only: the kernel does not
// even queue the others for it.
func NewListenerOf(bufBytes int, types ...EventType) (*Listener, error) {
	groups := map[EventType]uint32{EventNew: groupCTNew, EventUpdate: groupCTUpdate, EventDestroy: groupCTDestroy}
	var join []uint32
	for _, t := range types {
		g, ok := groups[t]
		if !ok {
			return nil, fmt.Errorf("listen to conntrack events: no event group for %v", t)
		}
		join = append(join, g)
	}
	sock, _, err := openNetfilterSocket("conntrack event")
	if err != nil {
		return nil, err
	}
	if err := joinEventGroups(sock, join, bufBytes); err != nil {
		_ = sock.Close()
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		_ = sock.Close()
		return nil, fmt.Errorf("conntrack event socket's eventfd: %w", err)
	}
	return &Listener{sock: sock, wake: os.NewFile(uintptr(efd), "conntrack-events-wake")}, nil
}

// joinEventGroups joins the socket to the groups and sizes its receive buffer.
func joinEventGroups(sock *os.File, groups []uint32, bufBytes int) error {
	rc, err := sock.SyscallConn()
	if err != nil {
		return fmt.Errorf("conntrack event socket: %w", err)
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		for _, g := range groups {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); serr != nil {
				serr = fmt.Errorf("join conntrack event group %d: %w", g, serr)
				return
			}
		}
		if bufBytes <= 0 {
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bufBytes); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, bufBytes)
		}
		if serr != nil {
			serr = fmt.Errorf("set conntrack event receive buffer to %d bytes: %w", bufBytes, serr)
		}
	})
	if cerr != nil {
		return fmt.Errorf("conntrack event socket: %w", cerr)
	}
	return serr
}

// SetFilter has the kernel drop the events that f rejects before they are queued for the
// Listener, so that they cost neither receive buffer nor a read (see EventFilter). It
// installs a socket filter (SO_ATTACH_FILTER), which sees one event per datagram, and
// replaces the filter of an earlier call; the zero EventFilter removes it. Safe to call at
// any time, Run running or not.
func (l *Listener) SetFilter(f EventFilter) error {
	prog, err := f.program()
	if err != nil {
		return err
	}
	rc, err := l.sock.SyscallConn()
	if err != nil {
		return fmt.Errorf("conntrack event socket: %w", err)
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		if len(prog) == 0 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
			if errors.Is(serr, unix.ENOENT) {
				serr = nil // no filter attached
			}
			return
		}
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	})
	if err := errors.Join(cerr, serr); err != nil {
		return fmt.Errorf("filter conntrack events (%+v): %w", f, err)
	}
	return nil
}

// ReadBuffer returns the socket's receive buffer size as the kernel reports it (SO_RCVBUF,
// which is twice the size that was asked for).
func (l *Listener) ReadBuffer() (int, error) {
	rc, err := l.sock.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("conntrack event socket: %w", err)
	}
	var n int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		n, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	}); err != nil {
		return 0, fmt.Errorf("conntrack event socket: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("get conntrack event receive buffer: %w", serr)
	}
	return n, nil
}

// SetLinger has Run, once it has read the socket empty, wait d before it reads again while
// events come at more than lingerBusyRate a second: they gather in the socket's buffer and
// are read in one go, at the price of up to d of delay. A reader woken for every event costs
// two thread switches per event, which dominate its CPU time under load; below that rate
// events are read as they come, without the delay. Zero (the default) never waits. Call it
// before Run.
func (l *Listener) SetLinger(d time.Duration) { l.linger = d }

// SetBurstDone has Run call fn, on Run's goroutine, at the end of each burst of events: once
// it has delivered events and then found the socket empty, and every burstMax events of a
// burst so long that it would otherwise hold the last ones back. A consumer that passes
// events on in batches (the mirror's sender) so learns where a burst ends without guessing.
// Call it before Run.
func (l *Listener) SetBurstDone(fn func()) { l.burstDone = fn }

// burstMax is the number of datagrams after which a long burst counts as done (SetBurstDone):
// sixteen reads.
const burstMax = 16 * recvSlots

// lingerBusyRate is the event rate above which a Listener lingers, measured over
// lingerWindow.
const (
	lingerBusyRate = 2000
	lingerWindow   = 100 * time.Millisecond
)

// busyMeter tells whether events come faster than lingerBusyRate, over the last full window.
type busyMeter struct {
	start time.Time
	n     int
	busy  bool
}

func (m *busyMeter) add(n int, now time.Time) {
	m.n += n
	if el := now.Sub(m.start); el >= lingerWindow {
		m.busy = float64(m.n) >= lingerBusyRate*el.Seconds()
		m.start, m.n = now, 0
	}
}

// Run delivers events to fn, in kernel order, until ctx is cancelled or Close is called
// (then it returns nil) or an unrecoverable receive error (returned). fn runs on Run's
// goroutine; while it runs, events queue in the socket, and when the socket's buffer
// overflows the kernel drops events: Run then delivers EventOverrun and carries on. A
// message that cannot be decoded is also reported as EventOverrun, since its change is
// lost too. Run closes the Listener when it returns and can be called only once.
func (l *Listener) Run(ctx context.Context, fn func(Event)) error {
	if !l.running.CompareAndSwap(false, true) {
		return ErrListenerRunning
	}
	defer l.Close()
	rc, err := l.sock.SyscallConn()
	if err != nil {
		return fmt.Errorf("conntrack event socket: %w", err)
	}
	wc, err := l.wake.SyscallConn()
	if err != nil {
		return fmt.Errorf("conntrack event socket: %w", err)
	}
	ready := newReadyWaiter(rc, wc)
	stop := context.AfterFunc(ctx, l.interrupt)
	defer stop()
	var rb recvBatch
	rb.init()
	wait, readSinceLinger := true, false
	inBurst := 0 // datagrams delivered since the last burstDone
	burstDone := func() {
		if l.burstDone != nil && inBurst > 0 {
			l.burstDone()
		}
		inBurst = 0
	}
	var rate busyMeter
	// The kernel reports only the first event it drops (ENOBUFS): it then marks the socket
	// congested and drops every event, silently, until the queue is read empty
	// (netlink_overrun, netlink_rcv_wake). Events dropped in that window, after the caller
	// began repairing the first loss, are lost too: the socket's drop counter tells.
	congested := false
	var dropsAtOverrun uint32
	for {
		if ctx.Err() != nil || l.closed.Load() {
			return nil
		}
		if wait {
			if err := ready.wait(); err != nil {
				if ctx.Err() != nil || l.closed.Load() {
					return nil
				}
				return fmt.Errorf("wait for conntrack events: %w", err)
			}
			wait = false
			continue // to the checks above: the wait may have been interrupted
		}
		n, err := rb.recv(rc)
		if l.linger > 0 {
			rate.add(n, time.Now())
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			if congested {
				// Read empty: the kernel delivers again from here on.
				congested = false
				if d, ok := socketDrops(rc); !ok || d != dropsAtOverrun {
					fn(Event{Type: EventOverrun})
				}
			}
			burstDone()
			if l.linger > 0 && readSinceLinger && rate.busy {
				readSinceLinger = false
				time.Sleep(l.linger)
			} else {
				wait = true
			}
			continue
		case err != nil && (ctx.Err() != nil || l.closed.Load()):
			return nil
		case errors.Is(err, unix.ENOBUFS):
			// Counted before the report: the caller's repair begins after it, and covers
			// the drops so far.
			congested = true
			dropsAtOverrun, _ = socketDrops(rc)
			fn(Event{Type: EventOverrun})
			continue
		case err != nil:
			return fmt.Errorf("receive conntrack events: %w", err)
		}
		wait, readSinceLinger = false, true
		for i := range n {
			b, truncated := rb.datagram(i)
			if truncated {
				fn(Event{Type: EventOverrun})
				continue
			}
			for len(b) > 0 {
				m, rest, ok := nextMessage(b)
				if !ok {
					fn(Event{Type: EventOverrun})
					break
				}
				b = rest
				if m.Header.Type == netlink.Noop || m.Header.Type == netlink.Done {
					continue
				}
				ev, ok, err := decodeEvent(m)
				switch {
				case err != nil:
					fn(Event{Type: EventOverrun})
				case ok:
					fn(ev)
				}
			}
		}
		if inBurst += n; inBurst >= burstMax {
			burstDone()
		}
	}
}

// socketDrops returns the number of datagrams the kernel has dropped for the socket
// (SO_MEMINFO's SK_MEMINFO_DROPS), and false if it cannot be read.
func socketDrops(rc syscall.RawConn) (uint32, bool) {
	var mem [unix.SK_MEMINFO_VARS]uint32
	size := uint32(unsafe.Sizeof(mem))
	var errno syscall.Errno
	err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err != nil || errno != 0 || size <= unix.SK_MEMINFO_DROPS*4 {
		return 0, false
	}
	return mem[unix.SK_MEMINFO_DROPS], true
}

// recvBatch reads up to recvSlots datagrams (events) with one recvmmsg.
type recvBatch struct {
	bufs []byte // recvSlots slots of recvSlotBytes
	iovs []unix.Iovec
	msgs []unix.Mmsghdr
}

const (
	recvSlots     = 64
	recvSlotBytes = 4096 // an event is a few hundred bytes; a larger one reads as an overrun
)

func (rb *recvBatch) init() {
	rb.bufs = make([]byte, recvSlots*recvSlotBytes)
	rb.iovs = make([]unix.Iovec, recvSlots)
	rb.msgs = make([]unix.Mmsghdr, recvSlots)
	for i := range rb.msgs {
		rb.iovs[i].Base = &rb.bufs[i*recvSlotBytes]
		rb.iovs[i].SetLen(recvSlotBytes)
		rb.msgs[i].Hdr.Iov = &rb.iovs[i]
		rb.msgs[i].Hdr.SetIovlen(1)
	}
}

// readyWaiter waits until the socket has a datagram to read or the eventfd has been written
// to (or a signal interrupts the wait). Its functions are made once, so that a wait, once per
// burst of events, allocates nothing.
type readyWaiter struct {
	rc, wc       syscall.RawConn
	fds          [2]unix.PollFd
	err          error
	outer, inner func(fd uintptr)
}

func newReadyWaiter(rc, wc syscall.RawConn) *readyWaiter {
	w := &readyWaiter{rc: rc, wc: wc}
	w.outer = func(fd uintptr) {
		w.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		if err := w.wc.Control(w.inner); err != nil {
			w.err = err
		}
	}
	w.inner = func(wfd uintptr) {
		w.fds[1] = unix.PollFd{Fd: int32(wfd), Events: unix.POLLIN}
		if _, err := unix.Ppoll(w.fds[:], nil, nil); err != nil && err != unix.EINTR {
			w.err = err
		}
	}
	return w
}

func (w *readyWaiter) wait() error {
	w.err = nil
	if err := w.rc.Control(w.outer); err != nil {
		return err
	}
	return w.err
}

// interrupt ends a wait in progress, and every later one.
func (l *Listener) interrupt() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = l.wake.Write(one[:])
}

// recv reads the datagrams waiting, at most recvSlots, and returns how many, or EAGAIN when
// the socket is empty.
func (rb *recvBatch) recv(rc syscall.RawConn) (int, error) {
	var n int
	var rerr error
	cerr := rc.Control(func(fd uintptr) {
		for i := range rb.msgs {
			rb.msgs[i].Len, rb.msgs[i].Hdr.Flags = 0, 0
		}
		// A quiet system call (quiet.go): the socket never blocks.
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&rb.msgs[0])),
			uintptr(len(rb.msgs)), unix.MSG_DONTWAIT, 0, 0)
		n, rerr = int(r), nil
		if errno != 0 {
			n, rerr = 0, errno
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	return n, rerr
}

// datagram returns the i-th datagram read, and whether it was cut short.
func (rb *recvBatch) datagram(i int) ([]byte, bool) {
	m := &rb.msgs[i]
	off := i * recvSlotBytes
	return rb.bufs[off : off+int(min(m.Len, recvSlotBytes))], m.Hdr.Flags&unix.MSG_TRUNC != 0
}

// nextMessage splits the first netlink message off b; the message's Data aliases b.
func nextMessage(b []byte) (m netlink.Message, rest []byte, ok bool) {
	if len(b) < unix.NLMSG_HDRLEN {
		return netlink.Message{}, nil, false
	}
	length := int(binary.NativeEndian.Uint32(b[0:4]))
	if length < unix.NLMSG_HDRLEN || length > len(b) {
		return netlink.Message{}, nil, false
	}
	m.Header = netlink.Header{
		Length:   uint32(length),
		Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:6])),
		Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:8])),
		Sequence: binary.NativeEndian.Uint32(b[8:12]),
		PID:      binary.NativeEndian.Uint32(b[12:16]),
	}
	m.Data = b[unix.NLMSG_HDRLEN:length]
	aligned := min((length+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b))
	return m, b[aligned:], true
}

// Close closes the socket, which ends a running Run. Calling it again returns the first
// result.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		l.interrupt()
		if err := errors.Join(l.sock.Close(), l.wake.Close()); err != nil {
			l.closeErr = fmt.Errorf("close conntrack events: %w", err)
		}
	})
	return l.closeErr
}
