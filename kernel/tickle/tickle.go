// Package tickle makes TCP connections that a failover stalled resume at once, rather than
// when their endpoints' retransmission timers, backed off exponentially during the outage,
// next fire (after a 3 s outage, up to about 3 s later).
//
// For each endpoint E of a connection, with O the other end:
//  1. A probe, an ACK from O's address with a sequence number outside E's window, makes E
//     answer with a plain ACK (RFC 793, RFC 5961) whose acknowledgment number is E's
//     rcv_nxt: the oldest byte O has sent and E not yet received, O's snd_una. Any other
//     packet E sends meanwhile tells the same.
//  2. An ICMP host unreachable goes to O, quoting a segment of the connection with that
//     sequence number. Linux takes it as RFC 6069's sign that the path was down rather than
//     congested (tcp_ld_RTO_revert): each one undoes a doubling of the retransmission
//     timeout, and when the time since the last retransmission is over the undone timeout,
//     O retransmits at once. The retransmission gets through the new active and the
//     connection carries on.
//
// CTDB sends the probe ("tickle ACK") after an address takeover; the revert is this
// package's. An endpoint with nothing unacknowledged ignores the ICMP (the kernel checks
// it has retransmitted), as does one whose snd_una is not the quoted sequence number, so a
// tickle never harms a connection. A soft error is recorded on the socket, reported only if
// the connection later times out. IPv4 only: Linux reverts the timeout for IPv4 alone.
//
// The packets are sent from a raw socket with a firewall mark: the caller's ruleset must
// exempt that mark from conntrack (notrack in a raw-priority output chain), or conntrack
// would take the probes for packets of the connections and NAT the ICMP's quoted header.
package tickle

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Side is one endpoint of a connection as it sees it: its own address and the address it
// sends to (the device's, when the device NATs the connection).
type Side struct {
	Local, Remote netip.AddrPort
}

// Conn is one TCP connection through the device: for a conntrack entry, A is the original
// direction's source and destination, B the reply direction's.
type Conn struct {
	A, B Side
}

// Options tune Tickle. The zero Options work.
type Options struct {
	// Mark is the firewall mark (SO_MARK) of the packets sent.
	Mark uint32
	// Reverts is the number of ICMP messages sent to each endpoint, each undoing one
	// doubling of its retransmission timeout. Zero means 8: outages up to about 50 s with
	// Linux's 200 ms minimum timeout.
	Reverts int
	// Rounds is the number of times an endpoint that has not answered is probed, Wait
	// apart. Zero means 3 rounds, 100 ms apart: a probe can be lost while the device
	// resolves the endpoint's hardware address.
	Rounds int
	Wait   time.Duration
}

func (o Options) withDefaults() Options {
	if o.Reverts <= 0 {
		o.Reverts = 8
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Wait <= 0 {
		o.Wait = 100 * time.Millisecond
	}
	return o
}

// Stats say what a Tickle did.
type Stats struct {
	Conns    int // IPv4 connections tickled (others are left alone)
	Probes   int // probes sent
	Answered int // endpoints that answered (at most 2 per connection)
	Reverts  int // ICMP messages sent
}

// Tickle tickles conns from the current network namespace and returns once every endpoint
// has answered, the rounds are over, or ctx is done.
func Tickle(ctx context.Context, conns []Conn, opts Options) (Stats, error) {
	opts = opts.withDefaults()
	var st Stats
	t := tickler{opts: opts, ends: make(map[endKey]int, 2*len(conns))}
	for _, c := range conns {
		if !c.valid() {
			continue
		}
		st.Conns++
		for _, s := range [2]Side{c.A, c.B} {
			t.ends[endKey{s.Local, s.Remote}] = len(t.sides)
			t.sides = append(t.sides, s)
		}
	}
	if len(t.sides) == 0 {
		return st, nil
	}
	t.answered = make([]bool, len(t.sides))
	t.allAnswered = make(chan struct{})

	var err error
	if t.send, err = openSender(opts.Mark); err != nil {
		return st, err
	}
	defer unix.Close(t.send)
	// The capture socket exists before the first probe leaves, so no answer is missed.
	capture, err := openCapture()
	if err != nil {
		return st, err
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { t.readAnswers(capture, done) })
	st.Probes, err = t.probe(ctx)
	close(done)
	wg.Wait() // the reverts of the last answers are sent and counted
	unix.Close(capture)
	if err == nil {
		err = t.sendErr()
	}
	return t.stats(st), err
}

// probe sends the rounds of probes to the endpoints that have not answered, and returns
// how many it sent.
func (t *tickler) probe(ctx context.Context) (int, error) {
	var (
		pkt [packetLen]byte
		n   int
	)
	timer := time.NewTimer(t.opts.Wait)
	defer timer.Stop()
	for range t.opts.Rounds {
		pending := t.pending()
		if len(pending) == 0 {
			break
		}
		for _, i := range pending {
			s := t.sides[i]
			// From the endpoint's peer, out of its window: sequence and acknowledgment 0.
			b := buildTCPAck(pkt[:0], s.Remote, s.Local, 0, 0)
			if err := sendTo(t.send, b, s.Local.Addr()); err != nil {
				return n, fmt.Errorf("tickle %s: probe: %w", s.Local, err)
			}
			n++
		}
		timer.Reset(t.opts.Wait)
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-t.allAnswered:
		case <-timer.C:
		}
	}
	return n, nil
}

func (c Conn) valid() bool {
	for _, s := range [2]Side{c.A, c.B} {
		if !s.Local.Addr().Is4() || !s.Remote.Addr().Is4() || s.Local.Port() == 0 || s.Remote.Port() == 0 {
			return false
		}
	}
	return true
}

type endKey struct{ local, remote netip.AddrPort }

// tickler is one Tickle's state, shared by the prober and the reader of answers.
type tickler struct {
	opts  Options
	send  int
	sides []Side         // endpoints: 2i and 2i+1 are connection i's
	ends  map[endKey]int // a packet's (source, destination) to the endpoint that sent it

	mu          sync.Mutex
	answered    []bool
	allAnswered chan struct{} // closed when every endpoint has answered
	nAnswer     int
	replied     int // endpoints whose peer has had its reverts
	nRevert     int
	err         error // the first failed ICMP send
}

func (t *tickler) pending() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var p []int
	for i, ok := range t.answered {
		if !ok {
			p = append(p, i)
		}
	}
	return p
}

func (t *tickler) stats(st Stats) Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st.Answered, st.Reverts = t.nAnswer, t.nRevert
	return st
}

func (t *tickler) sendErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// readAnswers reads captured TCP packets until done is closed, and sends the reverts of
// each endpoint's peer when the endpoint is first heard from.
func (t *tickler) readAnswers(fd int, done <-chan struct{}) {
	buf := make([]byte, captureLen)
	var icmp [icmpLen]byte
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		select {
		case <-done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			unix.Poll(fds, 20) // bounded, so that done is seen
			continue
		}
		if err != nil {
			continue // ENOBUFS and the like: the next round probes again
		}
		src, dst, ack, ok := parseTCP(buf[:n])
		if !ok {
			continue
		}
		i, ok := t.ends[endKey{src, dst}]
		if !ok {
			continue
		}
		t.mu.Lock()
		first := !t.answered[i]
		t.answered[i] = true
		if first {
			t.nAnswer++
		}
		t.mu.Unlock()
		if !first {
			continue
		}
		// The peer's oldest unacknowledged byte is what this endpoint expects next.
		peer := t.sides[i^1]
		pkt := buildUnreachable(icmp[:0], peer, ack)
		sent := 0
		var sendErr error
		for range t.opts.Reverts {
			if sendErr = sendTo(t.send, pkt, peer.Local.Addr()); sendErr != nil {
				break
			}
			sent++
		}
		t.mu.Lock()
		if sendErr != nil && t.err == nil {
			t.err = fmt.Errorf("tickle %s: revert: %w", peer.Local, sendErr)
		}
		t.nRevert += sent
		if t.replied++; t.replied == len(t.sides) {
			close(t.allAnswered)
		}
		t.mu.Unlock()
	}
}

// openSender opens the raw socket that sends whole IPv4 packets.
func openSender(mark uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return -1, fmt.Errorf("tickle: raw socket: %w", err)
	}
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("tickle: mark %#x: %w", mark, err)
		}
	}
	return fd, nil
}

func sendTo(fd int, pkt []byte, dst netip.Addr) error {
	for {
		err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()})
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// captureLen covers an IPv4 header with options and the TCP header up to the
// acknowledgment number, with room to spare.
const captureLen = 128

// openCapture opens a packet socket that receives the IPv4 TCP packets arriving on every
// interface of the namespace (not those it sends), cut to captureLen bytes.
func openCapture() (int, error) {
	proto := int(htons(unix.ETH_P_IP))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("tickle: packet socket: %w", err)
	}
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 3},
		bpf.LoadAbsolute{Off: 9, Size: 1}, // the IPv4 protocol
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_TCP, SkipTrue: 1},
		bpf.RetConstant{Val: captureLen},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tickle: capture filter: %w", err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tickle: attach capture filter: %w", err)
	}
	// Answers from thousands of connections arrive in a few milliseconds. Best effort: a
	// smaller buffer only costs a later round.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Packet sizes: IPv4 header without options, TCP header without options, ICMP header and
// the quoted IPv4 header and first 8 bytes of TCP (RFC 792).
const (
	ipLen     = 20
	tcpLen    = 20
	packetLen = ipLen + tcpLen
	icmpLen   = ipLen + 8 + ipLen + 8
)

// TCP flags and ICMP codes (RFC 793, RFC 792).
const (
	tcpACK         = 0x10
	tcpSYN         = 0x02
	tcpRST         = 0x04
	icmpUnreach    = 3
	icmpHostUnrch  = 1
	defaultTTL     = 64
	probeWindow    = 1024
	quotedTotalLen = ipLen + tcpLen
)

// appendIPv4 appends an IPv4 header. The kernel fills in the identification and the
// checksum of a raw socket's packets; the checksum is computed anyway, for a quoted header.
func appendIPv4(b []byte, proto uint8, src, dst netip.Addr, totalLen int) []byte {
	h := len(b)
	b = append(b, 0x45, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(totalLen))
	b = append(b, 0, 0, 0x40, 0, defaultTTL, proto, 0, 0) // DF
	s, d := src.As4(), dst.As4()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	binary.BigEndian.PutUint16(b[h+10:], checksum(b[h:h+ipLen], 0))
	return b
}

// buildTCPAck appends an IPv4 packet holding a bare TCP ACK from src to dst.
func buildTCPAck(b []byte, src, dst netip.AddrPort, seq, ack uint32) []byte {
	b = appendIPv4(b, unix.IPPROTO_TCP, src.Addr(), dst.Addr(), packetLen)
	t := len(b)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, ack)
	b = append(b, tcpLen/4<<4, tcpACK)
	b = binary.BigEndian.AppendUint16(b, probeWindow)
	b = append(b, 0, 0, 0, 0) // checksum, urgent pointer
	binary.BigEndian.PutUint16(b[t+16:], checksum(b[t:], pseudoHeader(src.Addr(), dst.Addr(), tcpLen)))
	return b
}

// buildUnreachable appends an IPv4 packet holding an ICMP host unreachable to the endpoint
// s, from the address it sends to, quoting a segment s sent with sequence number seq.
func buildUnreachable(b []byte, s Side, seq uint32) []byte {
	b = appendIPv4(b, unix.IPPROTO_ICMP, s.Remote.Addr(), s.Local.Addr(), icmpLen)
	m := len(b)
	b = append(b, icmpUnreach, icmpHostUnrch, 0, 0, 0, 0, 0, 0)
	b = appendIPv4(b, unix.IPPROTO_TCP, s.Local.Addr(), s.Remote.Addr(), quotedTotalLen)
	b = binary.BigEndian.AppendUint16(b, s.Local.Port())
	b = binary.BigEndian.AppendUint16(b, s.Remote.Port())
	b = binary.BigEndian.AppendUint32(b, seq)
	binary.BigEndian.PutUint16(b[m+2:], checksum(b[m:], 0))
	return b
}

// parseTCP reads the addresses and acknowledgment number of a captured IPv4 TCP packet
// that carries an ACK and neither SYN nor RST (a packet of an established connection).
func parseTCP(p []byte) (src, dst netip.AddrPort, ack uint32, ok bool) {
	if len(p) < ipLen || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
		return src, dst, 0, false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < ipLen || ihl > len(p) || binary.BigEndian.Uint16(p[6:])&0x1fff != 0 { // a later fragment
		return src, dst, 0, false
	}
	t := p[ihl:]
	if len(t) < 14 {
		return src, dst, 0, false
	}
	if flags := t[13]; flags&tcpACK == 0 || flags&(tcpSYN|tcpRST) != 0 {
		return src, dst, 0, false
	}
	srcIP := netip.AddrFrom4([4]byte(p[12:16]))
	dstIP := netip.AddrFrom4([4]byte(p[16:20]))
	src = netip.AddrPortFrom(srcIP, binary.BigEndian.Uint16(t[0:]))
	dst = netip.AddrPortFrom(dstIP, binary.BigEndian.Uint16(t[2:]))
	return src, dst, binary.BigEndian.Uint32(t[8:]), true
}

// pseudoHeader is the TCP checksum's sum over the IPv4 pseudo-header (RFC 793).
func pseudoHeader(src, dst netip.Addr, length int) uint32 {
	s, d := src.As4(), dst.As4()
	sum := uint32(unix.IPPROTO_TCP) + uint32(length)
	for _, a := range [][]byte{s[:], d[:]} {
		sum += uint32(binary.BigEndian.Uint16(a[0:])) + uint32(binary.BigEndian.Uint16(a[2:]))
	}
	return sum
}

// checksum is the Internet checksum (RFC 1071) of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
