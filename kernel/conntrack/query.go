package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// recvBufSize holds any datagram the kernel sends on a request socket: netlink dumps
	// are capped at 32 KiB per datagram (netlink_recvmsg caps max_recvmsg_len).
	recvBufSize = 64 << 10
	// recvTimeout bounds the wait for each datagram of an answer. The kernel answers
	// ctnetlink requests synchronously, so this only guards against a lost answer.
	recvTimeout = 10 * time.Second

	// sockSendBuf and sockRecvBuf are asked for the request socket (the kernel doubles
	// them), so that a batch of requests fits one sendmsg (netlink_sendmsg refuses a
	// message longer than the send buffer with EMSGSIZE) and its answers fit the receive
	// queue: the kernel queues acknowledgements and get answers without waiting, and
	// drops what does not fit (netlink_unicast with MSG_DONTWAIT, then ENOBUFS).
	sockSendBuf = 1 << 20
	sockRecvBuf = 4 << 20
)

// errStop is returned by a query callback to stop delivery (see querier.query).
var errStop = errors.New("stop")

// querier sends ctnetlink requests and reads their answers itself.
//
// It does not use mdlayher/netlink's Execute or Receive (nor ti-mo/conntrack's Get, which
// uses them): the kernel flags the answer to a single-entry IPCTNL_MSG_CT_GET with
// NLM_F_MULTI but ends it with an acknowledgement, not NLMSG_DONE (ctnetlink_fill_info
// sets NLM_F_MULTI whenever a portid is given), and mdlayher/netlink v1.11 then waits
// for NLMSG_DONE for ever. Here an answer ends at the acknowledgement or NLMSG_DONE
// carrying the request's sequence number, whichever comes first.
//
// It numbers its requests itself, so that a batch takes a run of sequence numbers.
//
// Its socket blocks and stays out of the runtime's poller (openNetfilterSocket): a read
// that waits blocks in the kernel, for recvTimeout at most (SO_RCVTIMEO), and one that
// does not wait says so (MSG_DONTWAIT). Close does not end a read that waits, which the
// kernel's synchronous answers make short.
type querier struct {
	mu     sync.Mutex // one request (or batch) and its answer at a time
	sock   *os.File
	raw    syscall.RawConn
	portID uint32
	seq    uint32 // last sequence number used
	buf    []byte // receive buffer
	msg    []byte // send buffer of query

	recvTimeout time.Duration // recvTimeout; tests shorten it
	timeoutSet  time.Duration // the socket's SO_RCVTIMEO

	// unfinished is the sequence number of an answer that query abandoned before its end
	// (0 if none): the next request reads the rest first, so that the socket is in step.
	unfinished uint32

	// The state of send and receive, so that they allocate nothing.
	out             []byte
	werr, rerr      error
	rn              int
	wait            bool
	quiet           bool // the next send or receive is a quiet system call (quietSyscall)
	writeFn, readFn func(fd uintptr)
}

func dialQuerier() (*querier, error) {
	sock, portID, err := openNetfilterSocket("conntrack request")
	if err != nil {
		return nil, err
	}
	raw, err := sock.SyscallConn()
	if err != nil {
		_ = sock.Close()
		return nil, err
	}
	q := &querier{sock: sock, raw: raw, portID: portID, buf: make([]byte, recvBufSize),
		seq: uint32(time.Now().UnixNano()), recvTimeout: recvTimeout}
	q.writeFn, q.readFn = q.write, q.read
	return q, nil
}

func (q *querier) close() error { return q.sock.Close() }

// setBuffers grows the socket buffers for batches: with SO_SNDBUFFORCE / SO_RCVBUFFORCE
// (CAP_NET_ADMIN; they ignore net.core.wmem_max and rmem_max), else as far as the plain
// options allow. It returns the sizes the kernel reports (twice what was asked for).
func (q *querier) setBuffers(send, recv int) (sendGot, recvGot int, err error) {
	var serr error
	cerr := q.raw.Control(func(fd uintptr) {
		set := func(force, plain, n int) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, n) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, n)
			}
		}
		set(unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, send)
		set(unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, recv)
		// Error answers without a copy of the request (the sequence number says
		// which): smaller answers, more of them fit the receive buffer.
		_ = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
		var e1, e2 error
		sendGot, e1 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		recvGot, e2 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		serr = errors.Join(e1, e2)
	})
	if err := errors.Join(cerr, serr); err != nil {
		return 0, 0, fmt.Errorf("conntrack socket buffers: %w", err)
	}
	return sendGot, recvGot, nil
}

// next returns the next sequence number; with q.mu held.
func (q *querier) next() uint32 {
	q.seq++
	return q.seq
}

// reserve takes n sequence numbers and returns the first; with q.mu held.
func (q *querier) reserve(n int) uint32 {
	first := q.seq + 1
	q.seq += uint32(n)
	return first
}

// query sends req and calls each for every message of the answer until it ends. An error
// from each is returned once the datagram in hand is read; the rest of the answer is left
// for the next request to skip. An NLMSG_ERROR answer is returned as its unix.Errno. The
// Data each gets is valid only during the call.
func (q *querier) query(req netlink.Message, each func(netlink.Message) error) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.finish(); err != nil {
		return err
	}
	seq := q.next()
	var h [nlmsgHeaderLen]byte
	ne := binary.NativeEndian
	ne.PutUint32(h[0:], uint32(nlmsgHeaderLen+len(req.Data)))
	ne.PutUint16(h[4:], uint16(req.Header.Type))
	ne.PutUint16(h[6:], uint16(req.Header.Flags))
	ne.PutUint32(h[8:], seq)
	q.msg = append(append(q.msg[:0], h[:]...), req.Data...)
	if err := q.send(q.msg, false); err != nil {
		return err
	}
	var eachErr error
	for {
		n, err := q.receive(true, false)
		if err != nil {
			return err
		}
		done := false
		var ackErr error
		err = forEachMessage(q.buf[:n], func(m netlink.Message) error {
			if m.Header.Sequence != seq || done {
				return nil // the rest of an answer abandoned by an earlier error
			}
			switch m.Header.Type {
			case netlink.Noop:
			case netlink.Error, netlink.Done:
				// Both carry an int32 errno (0 for an acknowledgement / a clean end).
				done = true
				if errno := messageErrno(m.Data); errno != 0 {
					ackErr = errno
				}
			default:
				if eachErr == nil && each != nil {
					eachErr = each(m)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if done {
			if ackErr != nil {
				return ackErr
			}
			return eachErr
		}
		if eachErr != nil {
			// The caller is done with the answer: leave the rest (the rest of a dump of a
			// million entries takes seconds) to the next request, which is none when the
			// socket is closed next, as after a cancelled snapshot.
			q.unfinished = seq
			return eachErr
		}
	}
}

// finish reads the rest of an answer that query abandoned, if any; with q.mu held.
func (q *querier) finish() error {
	for q.unfinished != 0 {
		n, err := q.receive(true, false)
		if err != nil {
			return fmt.Errorf("the rest of an abandoned answer: %w", err)
		}
		err = forEachMessage(q.buf[:n], func(m netlink.Message) error {
			if m.Header.Sequence == q.unfinished && (m.Header.Type == netlink.Error || m.Header.Type == netlink.Done) {
				q.unfinished = 0
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("the rest of an abandoned answer: %w", err)
		}
	}
	return nil
}

// messageErrno returns the errno of an NLMSG_ERROR or NLMSG_DONE payload (0 for an
// acknowledgement or a clean end).
func messageErrno(data []byte) unix.Errno {
	if len(data) < 4 {
		return 0
	}
	if code := int32(binary.NativeEndian.Uint32(data)); code < 0 {
		return unix.Errno(-code)
	}
	return 0
}

// send writes b, one or more netlink messages, in one sendmsg to the kernel (the
// socket's default destination). The kernel handles them one after the other before
// sendmsg returns (netlink_unicast_kernel), and queues each answer on the socket then.
func (q *querier) send(b []byte, quiet bool) error {
	q.out, q.quiet = b, quiet
	err := q.raw.Control(q.writeFn)
	q.out = nil
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if q.werr != nil {
		return fmt.Errorf("send: %w", q.werr)
	}
	return nil
}

// write is q.writeFn, kept in q so that a send allocates nothing. A write to the kernel
// does not wait for room: netlink_sendmsg hands it to ctnetlink at once.
func (q *querier) write(fd uintptr) {
	for {
		if q.quiet {
			_, q.werr = quietSyscall(unix.SYS_WRITE, fd, q.out)
		} else {
			_, q.werr = unix.Write(int(fd), q.out)
		}
		if q.werr != unix.EINTR {
			return
		}
	}
}

// receive reads one datagram into q.buf and returns its length. With wait it waits up to
// recvTimeout for one; without, it returns unix.EAGAIN at once when none is queued.
// unix.ENOBUFS says that the kernel dropped answers because the receive queue was full.
// With quiet the read is a quiet system call: never for a dump, whose next datagram the
// kernel fills during the read, walking as many hash buckets as it takes.
func (q *querier) receive(wait, quiet bool) (int, error) {
	if wait && q.timeoutSet != q.recvTimeout {
		if err := q.setRecvTimeout(q.recvTimeout); err != nil {
			return 0, err
		}
	}
	q.wait, q.quiet = wait, quiet
	if err := q.raw.Control(q.readFn); err != nil {
		return 0, fmt.Errorf("receive: %w", err)
	}
	switch {
	case wait && q.rerr == unix.EAGAIN:
		// SO_RCVTIMEO's end.
		return 0, fmt.Errorf("receive: no answer within %v: %w", q.recvTimeout, os.ErrDeadlineExceeded)
	case q.rerr == unix.EAGAIN || q.rerr == unix.ENOBUFS:
		return 0, q.rerr
	case q.rerr != nil:
		return 0, fmt.Errorf("receive: %w", q.rerr)
	case q.rn >= len(q.buf):
		// A netlink datagram is at most 32 KiB (netlink_recvmsg, netlink_dump), half
		// of q.buf: a full buffer means that one was cut.
		return 0, fmt.Errorf("receive: datagram of %d bytes or more", q.rn)
	}
	return q.rn, nil
}

// setRecvTimeout bounds a read that waits (SO_RCVTIMEO).
func (q *querier) setRecvTimeout(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	var serr error
	if err := q.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}); err != nil || serr != nil {
		return fmt.Errorf("conntrack socket receive timeout: %w", errors.Join(err, serr))
	}
	q.timeoutSet = d
	return nil
}

// read is q.readFn, kept in q so that a receive allocates nothing. A read that waits may
// block: it goes through the runtime's syscall bookkeeping, never quiet. recvfrom(2) takes
// no source address here.
func (q *querier) read(fd uintptr) {
	for {
		switch {
		case q.wait:
			q.rn, q.rerr = recvfrom(syscall.Syscall6, fd, q.buf, 0)
		case q.quiet:
			q.rn, q.rerr = recvfrom(syscall.RawSyscall6, fd, q.buf, unix.MSG_DONTWAIT)
		default:
			q.rn, q.rerr = recvfrom(syscall.Syscall6, fd, q.buf, unix.MSG_DONTWAIT)
		}
		// With SO_RCVTIMEO set, a signal ends a waiting read with EINTR rather than
		// restarting it (signal(7)).
		if q.rerr != unix.EINTR {
			return
		}
	}
}

// recvfrom reads one datagram into b through call, syscall.Syscall6 or (quiet)
// syscall.RawSyscall6.
func recvfrom(call func(trap, a1, a2, a3, a4, a5, a6 uintptr) (r1, r2 uintptr, err syscall.Errno),
	fd uintptr, b []byte, flags int) (int, error) {
	r, _, errno := call(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// forEachMessage calls fn for each netlink message in a datagram, without copying: the
// Data fn gets is valid only during the call. It stops at fn's first error.
func forEachMessage(b []byte, fn func(netlink.Message) error) error {
	ne := binary.NativeEndian
	for len(b) >= nlmsgHeaderLen {
		l := int(ne.Uint32(b))
		if l < nlmsgHeaderLen || l > len(b) {
			return fmt.Errorf("parse netlink messages: message of %d bytes in %d: %w", l, len(b), unix.EINVAL)
		}
		m := netlink.Message{
			Header: netlink.Header{
				Length:   uint32(l),
				Type:     netlink.HeaderType(ne.Uint16(b[4:])),
				Flags:    netlink.HeaderFlags(ne.Uint16(b[6:])),
				Sequence: ne.Uint32(b[8:]),
				PID:      ne.Uint32(b[12:]),
			},
			Data: b[nlmsgHeaderLen:l:l],
		}
		if err := fn(m); err != nil {
			return err
		}
		b = b[min(len(b), (l+3)&^3):]
	}
	if len(b) != 0 {
		return fmt.Errorf("parse netlink messages: %d bytes left over: %w", len(b), unix.EINVAL)
	}
	return nil
}

// parseMessages splits a datagram into netlink messages, copying their payloads.
func parseMessages(b []byte) ([]netlink.Message, error) {
	var out []netlink.Message
	err := forEachMessage(b, func(m netlink.Message) error {
		m.Data = append([]byte(nil), m.Data...)
		out = append(out, m)
		return nil
	})
	return out, err
}

// exchange sends the n messages in b, numbered first to first+n-1, in one sendmsg and
// reads the answers that the kernel queued meanwhile: answer gets the index of the
// request, the message type and its payload (valid during the call only). It reads until
// final has been answered (the index of the last message with NLM_F_ACK, or -1 to read
// until the queue is empty) and returns lost=true when the kernel reported dropped
// answers (ENOBUFS): then any request without an answer may or may not have been done.
// With q.mu held.
func (q *querier) exchange(b []byte, first uint32, n, final int,
	answer func(i int, typ netlink.HeaderType, data []byte)) (lost bool, err error) {
	if err := q.finish(); err != nil {
		return false, err
	}
	if err := q.send(b, n <= quietRequests); err != nil {
		return false, err
	}
	finalSeen := false
	for !finalSeen {
		m, err := q.receive(false, true)
		switch {
		case errors.Is(err, unix.ENOBUFS):
			lost = true
			continue
		case errors.Is(err, unix.EAGAIN):
			// Everything the kernel answered is queued by the time sendmsg returns, so
			// an empty queue before the final answer means the rest was dropped.
			return lost || final >= 0, nil
		case err != nil:
			return lost, err
		}
		err = forEachMessage(q.buf[:m], func(msg netlink.Message) error {
			i := int(msg.Header.Sequence - first)
			if i < 0 || i >= n || msg.Header.Type == netlink.Noop {
				return nil // the rest of an earlier answer
			}
			answer(i, msg.Header.Type, msg.Data)
			if i == final && (msg.Header.Type == netlink.Error || msg.Header.Type == netlink.Done) {
				finalSeen = true
			}
			return nil
		})
		if err != nil {
			return lost, err
		}
	}
	return lost, nil
}
