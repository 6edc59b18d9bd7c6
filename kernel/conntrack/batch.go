package conntrack

import (
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// InjectBatch takes the steps of Inject for many flows at once.
//
// Inject costs a netlink round trip per step (create; for an entry that exists, get then
// update, or delete and create). InjectBatch writes the step of every pending flow in one
// sendmsg, each request with its own sequence number, and matches the kernel's answers
// by sequence number. Only the last request of a sendmsg asks for an acknowledgement: the
// kernel handles the requests in order before sendmsg returns (netlink_rcv_skb) and
// answers the others only when they fail, so that ack says every answer is queued, and
// a batch of new entries costs one datagram to read instead of one per flow.
//
// Flows whose first step finds an entry take the same path as in Inject, step by step for
// the whole group: get, then update in place (same binding) or delete by id and create.
// When most of a group turned out to exist (a full sync onto a standby that has most
// entries), the next group starts with an update without status followed by a get in
// the same sendmsg: one round trip, and the get says whether the binding was right (if
// not, the entry is replaced as above) or the status needs bits added. A group that is
// mostly new switches back.

const (
	// batchFlows is the number of flows that go through their steps together, under the
	// Table's lock: it bounds the time that an Inject or Delete waits for a batch.
	batchFlows = 1024
	// batchMsgs and batchBytes bound the requests in one sendmsg; setBuffers may lower
	// them to what the socket's buffers take.
	batchMsgs  = 2048
	batchBytes = 256 << 10
	// answerCost is what the kernel charges the receive buffer for one answer: the skb
	// truesize of an acknowledgement or a get answer was 768 to 832 bytes on Linux 6.18.
	// The receive buffer must hold the answers of a whole sendmsg, since the kernel
	// queues them without waiting and drops what does not fit.
	answerCost = 1024
	// maxRequestLen bounds one request (an IPv6 create with both NATs is 288 bytes).
	maxRequestLen = 512
	// lostAttempts bounds the re-sends of a step whose answer the kernel dropped.
	lostAttempts = 8
)

// A flow's next step.
type batchOp uint8

const (
	opCreate  batchOp = iota // create (EXCL)
	opProbe                  // update without status, then get: for entries that likely exist
	opGet                    // get, to compare NAT bindings
	opUpdate                 // update in place (same binding), status from the entry got
	opReplace                // delete the entry got, by id, then create
	opDelete                 // delete the entry got, by id, then give up (no attempt left)
	opRemove                 // delete by original tuple (DeleteBatch); a missing entry is done
	opDone
)

// batchItem is one flow of a group and where it stands.
type batchItem struct {
	idx     int  // index in the caller's slice
	f       Flow // normalized
	want    Tuple
	op      batchOp
	cur     Flow  // the entry got (opUpdate, opReplace, opDelete)
	creates int   // create attempts, counted as Inject counts them
	retries int   // EAGAIN answers to the current create
	lost    int   // steps sent again because the answer was dropped
	err     error // final error
	counted bool  // the first step has been answered
	existed bool  // and found an entry
}

// batchReq is one request of a round and its answer.
type batchReq struct {
	item     int
	kind     reqKind
	end      int // end of its message in the send buffer
	answered bool
	errno    unix.Errno
	found    bool // a get answered with an entry: flow, ok, decErr
	flow     Flow
	ok       bool
	decErr   error
}

type reqKind uint8

const (
	reqCreate reqKind = iota
	reqGet
	reqUpdate // with status from the entry got
	reqProbe  // update without status
	reqDelete // by id
)

// errLostAnswer marks a request whose answer the kernel dropped (ENOBUFS): it may or may
// not have been done. It is no errno the kernel sends for these requests.
const errLostAnswer = unix.Errno(0xffff)

// batchState holds InjectBatch's buffers and tuning; guarded by Table.mu.
type batchState struct {
	items []batchItem
	reqs  []batchReq
	enc   encoder
	keys  map[flowKey]struct{}
	probe bool // most of the last group existed: start with opProbe

	maxReqs  int // requests per sendmsg that the receive buffer takes
	maxBytes int // bytes per sendmsg that the send buffer takes
	limit    int // current requests per sendmsg: halved when answers are dropped
}

type flowKey struct {
	proto uint8
	orig  Tuple
}

// createError returns the error for a create that the kernel refused with errno.
func createError(errno unix.Errno) error {
	if errno == unix.ENOMEM {
		// __nf_conntrack_alloc: the namespace holds nf_conntrack_max entries and
		// none could be dropped early (or, rarely, an allocation failed).
		return fmt.Errorf("%w: %w", ErrTableFull, errno)
	}
	return errno
}

// InjectBatch injects flows as Inject does, with the outcome of calling Inject for each
// flow in slice order, but with many netlink requests per system call (see batch.go for
// how). errs[i] belongs to flows[i], with the error Inject would return; errs is nil when
// every flow was injected. A flow that fails does not keep the others from being injected.
//
// Safe for concurrent use with every other method. Flows are applied in groups of up to
// 1024 (fewer when an original tuple comes again in the group), each under the lock that
// Inject and Delete take, so a long InjectBatch lets other calls in between groups. The
// changes it makes carry PortID in their events, as Inject's do.
func (t *Table) InjectBatch(flows []Flow) []error {
	var errs []error
	for start := 0; start < len(flows); {
		t.mu.Lock()
		start += t.injectGroup(flows, start, &errs, false)
		t.mu.Unlock()
	}
	return errs
}

// DeleteBatch deletes flows as Delete does (by f.Proto and f.Orig; a missing entry is not
// an error), with the outcome of calling Delete for each flow in slice order, but with
// many netlink requests per system call, as InjectBatch. errs[i] belongs to flows[i];
// errs is nil when every delete succeeded. Safe for concurrent use with every other
// method.
func (t *Table) DeleteBatch(flows []Flow) []error {
	var errs []error
	for start := 0; start < len(flows); {
		t.mu.Lock()
		start += t.injectGroup(flows, start, &errs, true)
		t.mu.Unlock()
	}
	return errs
}

// injectGroup injects (or, with remove, deletes) flows from start on, as many as make one
// group, and returns how many it took. With t.mu held.
func (t *Table) injectGroup(flows []Flow, start int, errs *[]error, remove bool) int {
	verb := "inject"
	if remove {
		verb = "delete"
	}
	b := &t.batch
	if b.keys == nil {
		b.keys = make(map[flowKey]struct{}, batchFlows)
	}
	// After a small group, delete its keys: clearing the map costs its capacity (batchFlows
	// slots), which a steady load's groups of a few flows would pay each time.
	if len(b.items) < batchFlows/16 {
		for i := range b.items {
			delete(b.keys, flowKey{b.items[i].f.Proto, b.items[i].f.Orig})
		}
	}
	if len(b.keys) > 0 {
		clear(b.keys)
	}
	b.items = b.items[:0]
	first := opCreate
	if b.probe {
		first = opProbe
	}
	n := 0
	if remove {
		first = opRemove
	}
	for i := start; i < len(flows) && len(b.items) < batchFlows; i++ {
		f := flows[i]
		if remove {
			f = Flow{Proto: f.Proto, Orig: f.Orig}
		}
		f, err := f.normalize()
		if err != nil {
			setErr(errs, len(flows), i, fmt.Errorf("%s flow %v: %w", verb, f, err))
			n++
			continue
		}
		// The steps of two flows with one original tuple would interleave (one could
		// update the entry the other just created with another binding): the second
		// waits for the next group, which keeps the order of Inject calls.
		k := flowKey{f.Proto, f.Orig}
		if _, dup := b.keys[k]; dup {
			break
		}
		b.keys[k] = struct{}{}
		it := batchItem{idx: i, f: f, op: first}
		if !remove {
			it.want = f.natReply()
		}
		if first == opCreate {
			it.creates = 1
		}
		b.items = append(b.items, it)
		n++
	}

	for t.round() {
	}

	existing, counted := 0, 0
	for i := range b.items {
		it := &b.items[i]
		if it.err != nil {
			setErr(errs, len(flows), it.idx, fmt.Errorf("%s flow %v: %w", verb, it.f, it.err))
		}
	}
	if remove {
		return n
	}
	for i := range b.items {
		if it := &b.items[i]; it.counted {
			counted++
			if it.existed {
				existing++
			}
		}
	}
	if counted > 0 {
		b.probe = existing*2 > counted
	}
	return n
}

func setErr(errs *[]error, n, i int, err error) {
	if *errs == nil {
		*errs = make([]error, n)
	}
	(*errs)[i] = err
}

// round sends the next step of every pending flow and applies the answers; it returns
// false when no flow has a step left.
func (t *Table) round() bool {
	b := &t.batch
	b.reqs = b.reqs[:0]
	for i := range b.items {
		switch b.items[i].op {
		case opDone:
		case opCreate:
			b.reqs = append(b.reqs, batchReq{item: i, kind: reqCreate})
		case opProbe:
			b.reqs = append(b.reqs, batchReq{item: i, kind: reqProbe}, batchReq{item: i, kind: reqGet})
		case opGet:
			b.reqs = append(b.reqs, batchReq{item: i, kind: reqGet})
		case opUpdate:
			b.reqs = append(b.reqs, batchReq{item: i, kind: reqUpdate})
		case opReplace:
			b.reqs = append(b.reqs, batchReq{item: i, kind: reqDelete}, batchReq{item: i, kind: reqCreate})
		case opDelete, opRemove:
			b.reqs = append(b.reqs, batchReq{item: i, kind: reqDelete})
		}
	}
	if len(b.reqs) == 0 {
		return false
	}
	for start := 0; start < len(b.reqs); {
		n, err := t.exchange(b.reqs[start:])
		if err != nil {
			// The socket failed (closed, or the kernel refused the sendmsg): so do the
			// flows whose requests it carried.
			for _, r := range b.reqs[start : start+n] {
				b.items[r.item].fail(err)
			}
		}
		start += n
	}
	pause := 0
	for i := 0; i < len(b.reqs); {
		j := i + 1
		for j < len(b.reqs) && b.reqs[j].item == b.reqs[i].item {
			j++
		}
		if it := &b.items[b.reqs[i].item]; it.op != opDone {
			it.step(b.reqs[i:j])
			if it.op == opCreate && it.retries > 0 {
				pause = max(pause, it.retries)
			}
		}
		i = j
	}
	if pause > 0 {
		time.Sleep(time.Duration(pause) * time.Millisecond) // as Inject's create does
	}
	return true
}

// exchange sends as many of reqs as fit one sendmsg, reads the answers into them and
// returns how many it sent. A flow's requests go in one sendmsg, since each depends on
// the one before.
func (t *Table) exchange(reqs []batchReq) (int, error) {
	b := &t.batch
	q := t.q
	q.mu.Lock()
	defer q.mu.Unlock()
	b.enc.reset()
	first := q.seq + 1
	n := 0
	for ; n < len(reqs); n++ {
		r := &reqs[n]
		if n > 0 && r.item != reqs[n-1].item &&
			(n+2 > b.limit || len(b.enc.b)+2*maxRequestLen > b.maxBytes) {
			break
		}
		*r = batchReq{item: r.item, kind: r.kind}
		it := &b.items[r.item]
		seq := first + uint32(n)
		switch r.kind {
		case reqCreate:
			appendCreate(&b.enc, it.f, seq)
		case reqGet:
			appendGet(&b.enc, it.f.Proto, it.f.Orig, seq)
		case reqUpdate:
			appendUpdate(&b.enc, it.f, updateStatus(it.f, it.cur), seq)
		case reqProbe:
			appendUpdate(&b.enc, it.f, 0, seq)
		case reqDelete:
			appendDelete(&b.enc, it.f.Proto, it.f.Orig, it.cur.ID, seq)
		}
		r.end = len(b.enc.b)
	}
	q.reserve(n)
	for k := range n - 1 {
		// Only the last request asks for an acknowledgement (see the top of the file).
		off := 0
		if k > 0 {
			off = reqs[k-1].end
		}
		b.enc.noAck(off)
	}
	lost, err := q.exchange(b.enc.b, first, n, n-1, func(i int, typ netlink.HeaderType, data []byte) {
		r := &reqs[i]
		r.answered = true
		switch typ {
		case netlink.Error, netlink.Done:
			r.errno = messageErrno(data)
		default:
			r.found = true
			r.flow, r.ok, r.decErr = decodeFlowData(data)
		}
	})
	if err != nil {
		return n, err
	}
	for k := range reqs[:n] {
		if r := &reqs[k]; !r.answered && (lost || r.kind == reqGet) {
			r.errno = errLostAnswer
		}
	}
	// Fewer requests per sendmsg after a loss; more again, up to what the buffers take,
	// after a clean exchange.
	if lost {
		b.limit = max(2, n/2)
	} else if b.limit < b.maxReqs {
		b.limit = min(b.maxReqs, b.limit+b.limit/4+2)
	}
	return n, nil
}

// step applies the answers to the item's requests of this round and sets its next step.
func (it *batchItem) step(reqs []batchReq) {
	for _, r := range reqs {
		if r.errno == errLostAnswer {
			// Send the step again: every step can be repeated (an entry created by the
			// lost request is found by the next create, one deleted is not found again).
			it.lost++
			if it.lost >= lostAttempts {
				it.fail(fmt.Errorf("kernel dropped the answers %d times: %w", it.lost, unix.ENOBUFS))
			}
			return
		}
	}
	first := !it.counted
	it.counted = true
	switch it.op {
	case opCreate, opReplace:
		if it.op == opReplace {
			if d := reqs[0]; d.errno != 0 && d.errno != unix.ENOENT {
				it.fail(fmt.Errorf("delete %v: %w", it.cur, d.errno))
				return
			}
		}
		switch c := reqs[len(reqs)-1]; {
		case c.errno == 0:
			it.op = opDone
		case c.errno == unix.EEXIST:
			// The original tuple (or the NATed reply tuple) is taken.
			it.existed = it.existed || first
			it.retries = 0
			it.op = opGet
		case c.errno == unix.EAGAIN:
			// The first NAT setup after the NAT module loads (DESIGN fact 7).
			it.retries++
			if it.retries >= eagainAttempts {
				it.fail(c.errno)
				return
			}
			it.op = opCreate
		default:
			it.fail(createError(c.errno))
		}
	case opProbe:
		u, g := reqs[0], reqs[1]
		it.existed = first && u.errno == 0
		if u.errno != 0 {
			// ENOENT: no entry, create it. Anything else: let the steps of Inject
			// find out what it is.
			it.again(u.errno)
			return
		}
		it.compare(g, true)
	case opGet:
		it.compare(reqs[0], false)
	case opUpdate:
		switch u := reqs[0]; u.errno {
		case 0:
			it.op = opDone
		case unix.ENOENT:
			it.again(u.errno) // expired between get and update: create it again
		default:
			it.fail(fmt.Errorf("update: %w", u.errno))
		}
	case opRemove:
		if d := reqs[0]; d.errno != 0 && d.errno != unix.ENOENT {
			it.fail(d.errno)
			return
		}
		it.op = opDone
	case opDelete:
		if d := reqs[0]; d.errno != 0 && d.errno != unix.ENOENT {
			it.fail(fmt.Errorf("delete %v: %w", it.cur, d.errno))
			return
		}
		it.fail(fmt.Errorf("gave up after %d attempts: %w", injectAttempts, unix.EEXIST))
	}
}

// compare takes the answer to a get: update in place when the binding is the same,
// replace the entry when it differs. probed says that the entry was updated without
// status just before the get.
func (it *batchItem) compare(g batchReq, probed bool) {
	name := func() string { return fmt.Sprintf("get flow %s %v", protoName(it.f.Proto), it.f.Orig) }
	switch {
	case g.errno == unix.ENOENT:
		it.again(unix.EEXIST) // the entry expired meanwhile, or only the reply tuple clashes
	case g.errno != 0:
		it.fail(fmt.Errorf("%s: %w", name(), g.errno))
	case !g.found:
		it.fail(fmt.Errorf("%s: kernel answered no entry", name()))
	case g.decErr != nil:
		it.fail(fmt.Errorf("%s: %w", name(), g.decErr))
	case !g.ok:
		it.fail(fmt.Errorf("%s: kernel answered no TCP/UDP entry", name()))
	case g.flow.Reply == it.want:
		it.cur = g.flow
		it.op = opUpdate
		if probed && updateStatus(it.f, it.cur) == 0 {
			it.op = opDone // the update without status was all it needed
		}
	default:
		// A different NAT binding cannot be changed in place: delete that very entry
		// (by id, so a newer one survives) and create f, if an attempt is left.
		it.cur = g.flow
		if it.creates >= injectAttempts {
			it.op = opDelete
			return
		}
		it.creates++
		it.retries = 0
		it.op = opReplace
	}
}

// again starts over with a create, if an attempt is left; err is what the last step
// answered.
func (it *batchItem) again(err error) {
	if it.creates >= injectAttempts {
		it.fail(fmt.Errorf("gave up after %d attempts: %w", injectAttempts, err))
		return
	}
	it.creates++
	it.retries = 0
	it.op = opCreate
}

func (it *batchItem) fail(err error) {
	it.err = err
	it.op = opDone
}

// updateStatus returns the status to send when updating cur to f's, 0 for none.
func updateStatus(f, cur Flow) uint32 {
	// Status bits can only be added (nf_ct_change_status_common answers EBUSY when a
	// set SEEN_REPLY or ASSURED, or any unchangeable bit, would be cleared), so send
	// the current status plus what f adds, and nothing when f adds nothing.
	if add := f.Status & settableStatus &^ cur.Status; add != 0 {
		return cur.Status | add
	}
	return 0
}
