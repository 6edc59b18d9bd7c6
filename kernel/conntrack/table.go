package conntrack

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

const (
	// injectAttempts bounds Inject's create / compare / update-or-delete cycle, which
	// starts over when packets create or expire the entry between two of its steps.
	injectAttempts = 4
	// eagainAttempts bounds the retries of a create that the kernel answers with EAGAIN:
	// it does so for the first NAT setup after loading the NAT module (DESIGN fact 7).
	eagainAttempts = 5
)

// Table is the conntrack table of the network namespace that was current when Open was
// called (netlink sockets bind to the namespace at creation). Its methods are safe for
// concurrent use: requests go out one at a time on one socket (one sendmsg at a time for
// InjectBatch), and dumps one at a time on another, so that a Dump callback may call the
// other methods. Close ends it.
//
// The kernel serialises every ctnetlink request of the host under one mutex
// (NFNL_CB_MUTEX, nfnetlink_rcv_msg), so more sockets or goroutines do not make
// injection faster; fewer system calls per entry (InjectBatch) do.
type Table struct {
	q  *querier // get, create, update, delete
	dq *querier // dumps

	// mu serialises Inject, InjectBatch's groups and Delete, so that one Inject's
	// get-then-update or get-then-delete is not interleaved with another on the same
	// entry.
	mu    sync.Mutex
	batch batchState // InjectBatch's buffers; guarded by mu

	closeOnce sync.Once
	closeErr  error
}

// Open opens netlink sockets to conntrack in the calling thread's network namespace:
// call it on a locked OS thread that has entered the namespace (or from the namespace the
// process runs in).
func Open() (*Table, error) {
	q, err := dialQuerier()
	if err != nil {
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	dq, err := dialQuerier()
	if err != nil {
		_ = q.close()
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	// Room for batches (InjectBatch) on the request socket; without CAP_NET_ADMIN the
	// buffers may stay smaller, and batches with them.
	snd, rcv, err := q.setBuffers(sockSendBuf, sockRecvBuf)
	if err != nil {
		_ = errors.Join(q.close(), dq.close())
		return nil, err
	}
	t := &Table{q: q, dq: dq}
	t.batch.maxReqs = min(batchMsgs, max(2, rcv/answerCost))
	t.batch.maxBytes = min(batchBytes, max(2*maxRequestLen, snd-64))
	t.batch.limit = t.batch.maxReqs
	return t, nil
}

// PortID returns the netlink port id of the socket that Inject, InjectBatch and Delete
// send on: the Event.PortID of the changes they make (see EventFilter.IgnorePortIDs).
func (t *Table) PortID() uint32 { return t.q.portID }

// Close closes the sockets. Calls in flight and later calls fail; calling Close again
// returns the first result.
func (t *Table) Close() error {
	t.closeOnce.Do(func() {
		if err := errors.Join(t.q.close(), t.dq.close()); err != nil {
			t.closeErr = fmt.Errorf("close conntrack table: %w", err)
		}
	})
	return t.closeErr
}

// Dump calls fn for every IPv4/IPv6 TCP/UDP entry, as the kernel's dump streams in; it
// stops at the first error fn returns and returns it, or returns ctx.Err() once ctx is
// cancelled (checked between entries). The kernel dumps in batches without locking the
// table, so entries created or destroyed during a dump may or may not be seen, as with
// any conntrack dump. fn runs on the caller's goroutine; it may call the Table's other
// methods, but not Dump.
func (t *Table) Dump(ctx context.Context, fn func(Flow) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: msgCTGet,
		Family:      netfilter.ProtoUnspec, // both IPv4 and IPv6
		Flags:       netlink.Request | netlink.Dump,
	}, nil)
	if err != nil {
		return fmt.Errorf("dump conntrack: %w", err)
	}
	var fnErr error
	err = t.dq.query(req, func(m netlink.Message) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, ok, err := decodeFlow(m)
		if err != nil {
			return fmt.Errorf("dump conntrack: %w", err)
		}
		if !ok {
			return nil
		}
		if err := fn(f); err != nil {
			fnErr = err
			return errStop
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err != nil {
		return fmt.Errorf("dump conntrack: %w", err)
	}
	return nil
}

// Get returns the entry with that original tuple (proto + Orig), ok=false if none.
// proto must be TCP or UDP.
func (t *Table) Get(proto uint8, orig Tuple) (Flow, bool, error) {
	q, err := Flow{Proto: proto, Orig: orig}.normalize()
	if err != nil {
		return Flow{}, false, fmt.Errorf("get flow %s %v: %w", protoName(proto), orig, err)
	}
	return t.get(q)
}

func (t *Table) get(q Flow) (Flow, bool, error) {
	var got Flow
	var found bool
	err := t.query(func() (netlink.Message, error) { return getMessage(q.Proto, q.Orig) },
		func(m netlink.Message) error {
			f, ok, err := decodeFlow(m)
			if err != nil {
				return err
			}
			got, found = f, ok
			return nil
		})
	if errors.Is(err, unix.ENOENT) {
		return Flow{}, false, nil
	}
	if err != nil {
		return Flow{}, false, fmt.Errorf("get flow %s %v: %w", protoName(q.Proto), q.Orig, err)
	}
	if !found {
		return Flow{}, false, fmt.Errorf("get flow %s %v: kernel answered no TCP/UDP entry", protoName(q.Proto), q.Orig)
	}
	return got, true, nil
}

// Delete removes the entry with f's original tuple (f.Proto and f.Orig; the rest of f is
// ignored); a missing entry is not an error.
func (t *Table) Delete(f Flow) error {
	q, err := Flow{Proto: f.Proto, Orig: f.Orig}.normalize()
	if err != nil {
		return fmt.Errorf("delete flow %v: %w", f, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.delete(q, 0); err != nil {
		return fmt.Errorf("delete flow %s %v: %w", protoName(q.Proto), q.Orig, err)
	}
	return nil
}

// delete removes the entry with q's original tuple and, if id is not 0, that id.
func (t *Table) delete(q Flow, id uint32) error {
	err := t.query(func() (netlink.Message, error) { return deleteMessage(q.Proto, q.Orig, id) }, nil)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// Inject makes the kernel hold f NAT-correct: it creates the entry with the original
// tuple, the plain inverse of Orig as reply tuple, and CTA_NAT_DST / CTA_NAT_SRC when
// f.DNAT() / f.SNAT() say so, and the kernel computes the NATed reply tuple (DESIGN
// fact 1). TCP entries get the "be liberal" flag in both directions (fact 6). Of
// f.Status only SEEN_REPLY and ASSURED are carried over; the kernel sets the rest. A
// Timeout of 0 becomes 1 second, since the kernel needs one.
//
// If an entry with that original tuple exists and its NAT binding equals f's, only its
// state, timeout, mark and status are updated (fact 7); otherwise it is deleted and f
// created. Calling Inject again with the same flow changes nothing but the timeout.
// EAGAIN on the NAT setup is retried a few times. When another entry already holds the
// reply tuple that f's NAT asks for, the error wraps unix.EEXIST; when the table is full,
// ErrTableFull.
//
// Safe for concurrent use; Injects and Deletes are applied one at a time.
func (t *Table) Inject(f Flow) error {
	f, err := f.normalize()
	if err != nil {
		return fmt.Errorf("inject flow %v: %w", f, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	want := f.natReply()
	for range injectAttempts {
		err = t.create(f)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("inject flow %v: %w", f, err)
		}
		// The original tuple (or the NATed reply tuple) is taken.
		cur, ok, gerr := t.get(f)
		if gerr != nil {
			return fmt.Errorf("inject flow %v: %w", f, gerr)
		}
		if !ok {
			continue // the entry expired meanwhile, or only the reply tuple clashes
		}
		if cur.Reply == want {
			err = t.update(f, cur)
			if errors.Is(err, unix.ENOENT) {
				continue // expired between get and update: create it again
			}
			if err != nil {
				return fmt.Errorf("inject flow %v: update: %w", f, err)
			}
			return nil
		}
		// A different NAT binding cannot be changed in place: delete that very entry
		// (by id, so a newer one survives) and create f on the next round.
		if err = t.delete(f, cur.ID); err != nil {
			return fmt.Errorf("inject flow %v: delete %v: %w", f, cur, err)
		}
		err = unix.EEXIST
	}
	return fmt.Errorf("inject flow %v: gave up after %d attempts: %w", f, injectAttempts, err)
}

// create sends the create message, retrying EAGAIN.
func (t *Table) create(f Flow) error {
	var err error
	for i := range eagainAttempts {
		err = t.query(func() (netlink.Message, error) { return createMessage(f) }, nil)
		if errno := unix.Errno(0); errors.As(err, &errno) && errno == unix.ENOMEM {
			return createError(errno)
		}
		if !errors.Is(err, unix.EAGAIN) {
			return err
		}
		time.Sleep(time.Duration(i+1) * time.Millisecond)
	}
	return err
}

// update changes state, timeout, mark and status of the existing entry cur to f's.
func (t *Table) update(f Flow, cur Flow) error {
	return t.query(func() (netlink.Message, error) { return updateMessage(f, updateStatus(f, cur)) }, nil)
}

func (t *Table) query(build func() (netlink.Message, error), each func(netlink.Message) error) error {
	m, err := build()
	if err != nil {
		return fmt.Errorf("build message: %w", err)
	}
	return t.q.query(m, each)
}
