package conntrack

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// timeoutSysctl names the sysctl under /proc/sys/net/netfilter that holds the default
// timeout for proto and TCP state (tcp_timeouts in net/netfilter/nf_conntrack_proto_tcp.c;
// SYN_SENT2 shares SYN_SENT's value and has no sysctl of its own).
func timeoutSysctl(proto, tcpState uint8) (string, error) {
	switch proto {
	case unix.IPPROTO_UDP:
		// A mirrored UDP flow has seen both directions: the "stream" timeout applies
		// (nf_conntrack_udp_packet). Unreplied flows use nf_conntrack_udp_timeout.
		return "nf_conntrack_udp_timeout_stream", nil
	case unix.IPPROTO_TCP:
		name, ok := map[uint8]string{
			TCPStateSynSent:     "syn_sent",
			TCPStateSynRecv:     "syn_recv",
			TCPStateEstablished: "established",
			TCPStateFinWait:     "fin_wait",
			TCPStateCloseWait:   "close_wait",
			TCPStateLastAck:     "last_ack",
			TCPStateTimeWait:    "time_wait",
			TCPStateClose:       "close",
			TCPStateSynSent2:    "syn_sent",
		}[tcpState]
		if !ok {
			return "", fmt.Errorf("%w: tcp state %d", ErrUnsupported, tcpState)
		}
		return "nf_conntrack_tcp_timeout_" + name, nil
	default:
		return "", fmt.Errorf("%w: protocol %d", ErrUnsupported, proto)
	}
}

// DefaultTimeout returns the kernel's timeout in seconds for an entry in that protocol/TCP
// state, read from /proc/sys/net/netfilter/nf_conntrack_*_timeout_* of the calling
// thread's network namespace (the kernel resolves /proc/sys/net by the reading task).
// Used to show how long a connection has been idle: default - remaining. For UDP it is
// the timeout of a flow that has seen replies. Safe for concurrent use.
func DefaultTimeout(proto, tcpState uint8) (uint32, error) {
	name, err := timeoutSysctl(proto, tcpState)
	if err != nil {
		return 0, fmt.Errorf("default timeout: %w", err)
	}
	b, err := os.ReadFile("/proc/sys/net/netfilter/" + name)
	if err != nil {
		return 0, fmt.Errorf("default timeout: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("default timeout: parse %s: %w", name, err)
	}
	return uint32(v), nil
}
