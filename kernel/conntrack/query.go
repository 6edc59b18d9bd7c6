package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

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
)

// errStop is returned by a query callback to stop delivery; the rest of the answer is
// still read, so that the socket stays in step.
var errStop = errors.New("stop")

// querier sends ctnetlink requests and reads their answers itself.
//
// It does not use mdlayher/netlink's Execute or Receive (nor ti-mo/conntrack's Get, which
// uses them): the kernel flags the answer to a single-entry IPCTNL_MSG_CT_GET with
// NLM_F_MULTI but ends it with an acknowledgement, not NLMSG_DONE (ctnetlink_fill_info
// sets NLM_F_MULTI whenever a portid is given), and mdlayher/netlink v1.11 then waits
// for NLMSG_DONE for ever. Here an answer ends at the acknowledgement or NLMSG_DONE
// carrying the request's sequence number, whichever comes first.
type querier struct {
	mu   sync.Mutex // one request and its answer at a time
	conn *netlink.Conn
	raw  syscall.RawConn
	buf  []byte
}

func dialQuerier() (*querier, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return &querier{conn: c, raw: raw, buf: make([]byte, recvBufSize)}, nil
}

func (q *querier) close() error { return q.conn.Close() }

// query sends req and calls each for every message of the answer until it ends; an error
// from each stops the calls (and is returned) but not the reading. An NLMSG_ERROR answer
// is returned as its unix.Errno.
func (q *querier) query(req netlink.Message, each func(netlink.Message) error) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	sent, err := q.conn.Send(req)
	if err != nil {
		return err
	}
	var eachErr error
	for {
		msgs, err := q.receive()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Sequence != sent.Header.Sequence {
				continue // the rest of an answer abandoned by an earlier error
			}
			switch m.Header.Type {
			case netlink.Noop:
			case netlink.Error, netlink.Done:
				// Both carry an int32 errno (0 for an acknowledgement / a clean end).
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
						return unix.Errno(-code)
					}
				}
				return eachErr
			default:
				if eachErr == nil && each != nil {
					eachErr = each(m)
				}
			}
		}
	}
}

// receive reads one datagram and splits it into messages.
func (q *querier) receive() ([]netlink.Message, error) {
	if err := q.conn.SetReadDeadline(time.Now().Add(recvTimeout)); err != nil {
		return nil, err
	}
	var n int
	var rerr error
	for {
		err := q.raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), q.buf, unix.MSG_TRUNC)
			return !errors.Is(rerr, unix.EAGAIN) // EAGAIN: wait until readable
		})
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		if !errors.Is(rerr, unix.EINTR) {
			break
		}
	}
	if rerr != nil {
		return nil, fmt.Errorf("receive: %w", rerr)
	}
	if n > len(q.buf) {
		return nil, fmt.Errorf("receive: datagram of %d bytes truncated", n)
	}
	return parseMessages(q.buf[:n])
}

// parseMessages splits a datagram into netlink messages, copying their payloads.
func parseMessages(b []byte) ([]netlink.Message, error) {
	raw, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil, fmt.Errorf("parse netlink messages: %w", err)
	}
	out := make([]netlink.Message, 0, len(raw))
	for _, r := range raw {
		out = append(out, netlink.Message{
			Header: netlink.Header{
				Length:   r.Header.Len,
				Type:     netlink.HeaderType(r.Header.Type),
				Flags:    netlink.HeaderFlags(r.Header.Flags),
				Sequence: r.Header.Seq,
				PID:      r.Header.Pid,
			},
			Data: append([]byte(nil), r.Data...),
		})
	}
	return out, nil
}
