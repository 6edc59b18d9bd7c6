package failover

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PacerArg is the first argument that makes a program run RunPacerProcess: a daemon whose
// Config.PacerProcess names its own executable checks for it at the top of main.
const PacerArg = "heartbeat-pacer"

// The pacer process solves what a real-time thread in this process cannot: after each sleep
// a Go thread needs a P (the scheduler's right to run Go code) and, on a box saturated by
// other work, every P may be held by a thread at normal priority that the kernel is not
// running. Measured at failover.nettimeout 0.03 on two cores with four spinning processes,
// the thread pacer ran 48 to 130 ms late, and the peer failed this device. In a process of
// its own, started from a SCHED_FIFO thread, every thread, the Go scheduler's included, is
// real-time, so nothing it waits for is starved.
//
// The daemon and the pacer process share one page (a memfd): the heartbeat sequence
// counter, the time of the latest round, the pacer's send count, and the latest round
// itself under a sequence lock. The heartbeat sockets are passed at start; a new socket
// means a new pacer process.

// Offsets in the shared page. The atomics are 8-byte aligned (the page is).
const (
	memSeq      = 0  // uint64: the last heartbeat sequence number taken
	memLastSent = 8  // int64: unix nanoseconds of the latest round, the loop's or the pacer's
	memSent     = 16 // uint64: datagrams the pacer sent
	memVersion  = 24 // uint64: the round's sequence lock, odd while it is written
	memInterval = 32 // int64: nanoseconds between rounds
	memHBLen    = 40 // uint32: length of the encoded heartbeat
	memNDest    = 44 // uint32: destinations
	memDests    = 48 // maxPacedDests × destLen
	destLen     = 24 // socket index (1), address length (1), port (2), address (16), pad (4)
	maxDests    = 8
	memHB       = memDests + maxDests*destLen
	memSize     = memHB + maxHeartbeatLen

	hbSeqOffset = 16 // where the sequence number sits in an encoded heartbeat
)

// paceMem is the shared page, seen through atomics where both processes write.
type paceMem []byte

func (m paceMem) word(off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&m[off]))
}

// pacedDest is one destination of a round: the index of the socket (in the pacer process's
// list) and the peer's address.
type pacedDest struct {
	sock int
	to   netip.AddrPort
}

// writeRound publishes a round: the heartbeat encoded (its sequence number is replaced by
// the pacer's) and where it goes.
func (m paceMem) writeRound(interval time.Duration, hb []byte, dests []pacedDest) {
	dests = dests[:min(len(dests), maxDests)]
	v := m.word(memVersion)
	v.Add(1)
	binary.NativeEndian.PutUint64(m[memInterval:], uint64(interval))
	binary.NativeEndian.PutUint32(m[memHBLen:], uint32(len(hb)))
	binary.NativeEndian.PutUint32(m[memNDest:], uint32(len(dests)))
	for i, d := range dests {
		e := m[memDests+i*destLen : memDests+(i+1)*destLen]
		clear(e)
		e[0] = byte(d.sock)
		a := d.to.Addr().AsSlice()
		e[1] = byte(len(a))
		binary.BigEndian.PutUint16(e[2:], d.to.Port())
		copy(e[4:], a)
	}
	copy(m[memHB:], hb)
	v.Add(1)
}

// pacerRound is a round as the pacer process read it.
type pacerRound struct {
	version  uint64
	interval time.Duration
	hb       []byte
	dests    []pacedDest
}

// readRound copies the latest round out, or reports false while none is published or it is
// being written.
func (m paceMem) readRound(r *pacerRound) bool {
	v := m.word(memVersion).Load()
	if v == 0 || v%2 == 1 {
		return false
	}
	r.interval = time.Duration(binary.NativeEndian.Uint64(m[memInterval:]))
	n := int(binary.NativeEndian.Uint32(m[memHBLen:]))
	nd := int(binary.NativeEndian.Uint32(m[memNDest:]))
	if n < hbHeaderLen || n > maxHeartbeatLen || nd > maxDests || r.interval <= 0 {
		return false
	}
	r.hb = append(r.hb[:0], m[memHB:memHB+n]...)
	r.dests = r.dests[:0]
	for i := range nd {
		e := m[memDests+i*destLen : memDests+(i+1)*destLen]
		a, ok := netip.AddrFromSlice(e[4 : 4+int(e[1])])
		if !ok {
			return false
		}
		r.dests = append(r.dests, pacedDest{sock: int(e[0]), to: netip.AddrPortFrom(a, binary.BigEndian.Uint16(e[2:]))})
	}
	r.version = v
	return m.word(memVersion).Load() == v
}

// pacerWait is how long the pacer sleeps when the latest round went out since ago: until a
// quarter of an interval after the next round is due. While the loop keeps time, the pacer
// so wakes once per round: waking every half interval, as it did, cost an idle pacer 4.8 ms
// of CPU a second at the default timeout (each wake-up is several of the Go runtime's
// thread switches), 2.5 ms now. When the loop is late, the pacer sends 1.25 intervals after
// the last round.
func pacerWait(interval, since time.Duration) time.Duration {
	return max(interval-since, 0) + interval/4
}

// RunPacerProcess is the pacer process's main: file descriptor 3 is the shared page, 4 on
// the heartbeat sockets. It sends every round the daemon has not sent for an interval, and
// returns when the daemon is gone.
func RunPacerProcess() error {
	// Nothing here is worth the collector's threads; the page and buffers are all it holds.
	runtime.GOMAXPROCS(1)
	if len(os.Args) < 3 {
		return fmt.Errorf("heartbeat pacer: want %s NSOCKETS", PacerArg)
	}
	nsock, err := strconv.Atoi(os.Args[2])
	if err != nil || nsock < 0 || nsock > maxDests {
		return fmt.Errorf("heartbeat pacer: %q sockets", os.Args[2])
	}
	b, err := unix.Mmap(3, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("heartbeat pacer: map the shared page: %w", err)
	}
	m := paceMem(b)
	ppid := os.Getppid()
	var (
		r   pacerRound
		buf []byte
	)
	for os.Getppid() == ppid { // Pdeathsig ends us too; this is the belt to its braces
		wait := maxInterval / 2
		if m.readRound(&r) {
			since := time.Since(time.Unix(0, int64(m.word(memLastSent).Load())))
			if since >= r.interval {
				buf = m.sendRound(&r, buf, nsock)
				since = 0
			}
			wait = min(wait, pacerWait(r.interval, since))
		}
		ts := unix.NsecToTimespec(wait.Nanoseconds())
		_ = unix.Nanosleep(&ts, nil)
	}
	return nil
}

// sendRound sends r with a fresh sequence number, unless the daemon has published a newer
// round meanwhile (whose number may be lower than the one taken: see pacer.send).
func (m paceMem) sendRound(r *pacerRound, buf []byte, nsock int) []byte {
	seq := m.word(memSeq).Add(1)
	if m.word(memVersion).Load() != r.version {
		return buf
	}
	buf = append(buf[:0], r.hb...)
	binary.BigEndian.PutUint64(buf[hbSeqOffset:], seq)
	for _, d := range r.dests {
		if d.sock >= nsock {
			continue
		}
		if unix.Sendto(4+d.sock, buf, 0, sockaddr(d.to)) == nil {
			m.word(memSent).Add(1)
		}
	}
	m.word(memLastSent).Store(uint64(time.Now().UnixNano()))
	return buf
}

func sockaddr(to netip.AddrPort) unix.Sockaddr {
	if to.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
}

// procPacer is the daemon's side of a pacer process.
type procPacer struct {
	exe     string
	logger  *slog.Logger
	mem     paceMem
	memFD   *os.File
	socks   chan []*net.UDPConn // the sockets the pacer process must have; latest wins
	known   []*net.UDPConn      // the loop's view of what the process has (loop goroutine only)
	encBuf  []byte
	dests   []pacedDest
	connBuf []*net.UDPConn
}

// newProcPacer creates the shared page. The process starts in run.
func newProcPacer(exe string, logger *slog.Logger) (*procPacer, error) {
	fd, err := unix.MemfdCreate("heartbeat-pacer", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("heartbeat pacer: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "heartbeat-pacer")
	if err := f.Truncate(memSize); err != nil {
		f.Close()
		return nil, fmt.Errorf("heartbeat pacer: size the shared page: %w", err)
	}
	b, err := unix.Mmap(fd, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("heartbeat pacer: map the shared page: %w", err)
	}
	return &procPacer{exe: exe, logger: logger, mem: b, memFD: f, socks: make(chan []*net.UDPConn, 1)}, nil
}

func (p *procPacer) seq() *atomic.Uint64 { return p.mem.word(memSeq) }

// publish runs once per heartbeat round: it reuses its buffers, and only a changed set of
// sockets (rare) allocates.
func (p *procPacer) publish(r *pacedRound) {
	conns := p.connBuf[:0]
	for _, s := range r.sends {
		if !slices.Contains(conns, s.conn) {
			conns = append(conns, s.conn)
		}
	}
	p.connBuf = conns
	if !slices.Equal(conns, p.known) {
		p.known = slices.Clone(conns)
		select { // latest wins
		case <-p.socks:
		default:
		}
		p.socks <- p.known
	}
	hb := r.hb
	hb.Seq = 0
	b, err := hb.AppendBinary(p.encBuf[:0])
	if err != nil {
		return
	}
	p.encBuf = b
	p.dests = p.dests[:0]
	for _, s := range r.sends {
		p.dests = append(p.dests, pacedDest{sock: slices.Index(conns, s.conn), to: s.to})
	}
	p.mem.writeRound(r.interval, b, p.dests)
}

func (p *procPacer) sentAt(at time.Time) { p.mem.word(memLastSent).Store(uint64(at.UnixNano())) }

func (p *procPacer) sentCount() uint64 { return p.mem.word(memSent).Load() }

// run keeps a pacer process running with the current sockets until ctx ends. Its goroutine
// holds a real-time thread of its own, never given back: the process is started from it, so
// that the process and every thread it makes inherit the policy, and the kernel's
// parent-death signal is tied to it.
func (p *procPacer) run(ctx context.Context) {
	// The page stays mapped: the loop reads the sequence counter and the send count from it
	// until it has finished, after run returns. It is one page per Machine.
	defer p.memFD.Close()
	runtime.LockOSThread()
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: pacerPriority}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		p.logger.Warn("heartbeat pacer at normal priority: a CPU-starved device may send heartbeats late", slog.Any("err", err))
	}
	var conns []*net.UDPConn
	for ctx.Err() == nil {
		cmd, exited, err := p.start(conns)
		var retry <-chan time.Time
		if err != nil {
			p.logger.Error("heartbeat pacer process: heartbeats go out at normal priority", slog.Any("err", err))
			retry = time.After(5 * time.Second)
		}
		select {
		case <-ctx.Done():
		case <-retry:
		case conns = <-p.socks:
		case err := <-exited:
			p.logger.Warn("heartbeat pacer process exited: restarting it", slog.Any("err", err))
			exited = nil
			select { // a process that dies at once is not restarted in a tight loop
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		if cmd != nil && exited != nil {
			cmd.Process.Kill()
			<-exited
		}
	}
}

// start starts a pacer process with the shared page and conns' sockets; exited receives
// Wait's result.
func (p *procPacer) start(conns []*net.UDPConn) (*exec.Cmd, chan error, error) {
	files := []*os.File{p.memFD}
	defer func() {
		for _, f := range files[1:] {
			f.Close()
		}
	}()
	for _, c := range conns {
		f, err := dupSocket(c)
		if err != nil {
			return nil, nil, err
		}
		files = append(files, f)
	}
	cmd := exec.Command(p.exe, PacerArg, strconv.Itoa(len(conns)))
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s %s: %w", p.exe, PacerArg, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return cmd, exited, nil
}

// dupSocket returns a duplicate of c's descriptor. The duplicate shares the socket, and its
// non-blocking mode, which os.NewFile leaves as it is.
func dupSocket(c *net.UDPConn) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		nfd  int
		derr error
	)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicate heartbeat socket: %w", derr)
	}
	return os.NewFile(uintptr(nfd), "heartbeat"), nil
}
