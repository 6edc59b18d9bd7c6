package failover

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// pacerPriority is the SCHED_FIFO priority of the pacer's thread: above every normal task,
// at the low end of the real-time range (1-99) so that the kernel's own threads come first.
const pacerPriority = 10

// pacer keeps heartbeats going out on time when the daemon is starved of CPU (both cores
// saturated by other work, or the daemon itself busy with a burst of conntrack events): a
// peer that hears nothing for Timeout takes over, so a late heartbeat is a spurious failover.
// It runs on an OS thread of its own at real-time priority and sleeps in the kernel rather
// than on a Go timer, whose firing needs a scheduler thread at normal priority. It sends only
// when the loop has not sent for an interval, repeating the loop's latest heartbeat with a
// fresh sequence number: what a heartbeat says still comes from the loop alone.
type pacer struct {
	latest   atomic.Pointer[pacedRound]
	lastSent atomic.Int64 // unix nanoseconds of the latest round, the loop's or the pacer's
	sent     atomic.Uint64
	seq      *atomic.Uint64 // shared with the loop, so the peer sees one increasing sequence
	logger   *slog.Logger
}

// pacedRound is a heartbeat round as the loop last sent it.
type pacedRound struct {
	hb       heartbeat
	interval time.Duration
	sends    []pacedSend
}

type pacedSend struct {
	conn *net.UDPConn
	to   netip.AddrPort
}

// roundPacer sends the heartbeat rounds that the loop, starved of CPU, has not sent on
// time: a thread of this process (pacer) or a process of its own (procPacer).
type roundPacer interface {
	// publish records the round the loop is about to send; the loop calls it before taking
	// the round's sequence number.
	publish(r *pacedRound)
	// sentAt records when the loop last sent a round.
	sentAt(at time.Time)
	// sentCount is the number of datagrams the pacer sent.
	sentCount() uint64
	// run sends overdue rounds until ctx ends.
	run(ctx context.Context)
}

func (p *pacer) sentCount() uint64 { return p.sent.Load() }

// publish records the round the loop is about to send, for the pacer to repeat. The loop
// calls it before taking the round's sequence number.
func (p *pacer) publish(r *pacedRound) { p.latest.Store(r) }

// sentAt records when the loop last sent a round.
func (p *pacer) sentAt(at time.Time) { p.lastSent.Store(at.UnixNano()) }

// run sends overdue rounds until ctx ends. The thread it locks ends with it (it is never
// unlocked), so the real-time priority does not leak to other goroutines.
func (p *pacer) run(ctx context.Context) {
	runtime.LockOSThread()
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: pacerPriority}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		p.logger.Warn("heartbeats at normal priority: a CPU-starved device may send them late", slog.Any("err", err))
	}
	var (
		buf      []byte
		lastWarn time.Time
	)
	for ctx.Err() == nil {
		wait := maxInterval / 2 // so that the end of ctx is seen soon
		if r := p.latest.Load(); r != nil {
			wait = min(wait, r.interval/2)
			if since := time.Since(time.Unix(0, p.lastSent.Load())); since >= r.interval {
				buf = p.send(r, buf)
			}
		}
		ts := unix.NsecToTimespec(wait.Nanoseconds())
		due := time.Now().Add(wait)
		_ = unix.Nanosleep(&ts, nil) // EINTR only shortens the wait
		// The kernel wakes this thread on time; a late start means it waited for the Go
		// scheduler (a P) after the sleep, which a starved box can delay.
		if late := time.Since(due); late > maxLate && time.Since(lastWarn) > time.Second {
			lastWarn = time.Now()
			p.logger.Warn("heartbeat pacer ran late", "late", late.Round(time.Millisecond))
		}
	}
}

// maxLate is how late the pacer may run before it says so.
const maxLate = 20 * time.Millisecond

func (p *pacer) send(r *pacedRound, buf []byte) []byte {
	hb := r.hb
	hb.Seq = p.seq.Add(1)
	if p.latest.Load() != r {
		// The loop published a newer round, maybe with a lower sequence number than ours:
		// sending the older content under ours would make the peer take it as the latest.
		return buf
	}
	b, err := hb.AppendBinary(buf[:0])
	if err != nil {
		return buf // the loop logs payload errors when it sends
	}
	for _, s := range r.sends {
		if sendRaw(s.conn, b, s.to) == nil {
			p.sent.Add(1)
		}
	}
	p.lastSent.Store(time.Now().UnixNano())
	return b
}

// sendRaw sends b from c's socket with a plain sendto. Going around the *net.UDPConn's
// write lock matters: the loop may hold it, on a thread that the starvation has descheduled.
func sendRaw(c *net.UDPConn, b []byte, to netip.AddrPort) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var sa unix.Sockaddr
	if to.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Sendto(int(fd), b, 0, sa) }); err != nil {
		return err
	}
	return serr
}
