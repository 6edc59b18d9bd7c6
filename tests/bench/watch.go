package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/openappliance/appliance/kernel/conntrack"
)

// WatchCommand is the argument that makes the bench binary run WatchNew: the harness starts
// it at real-time priority inside a device's namespace (see watchNew).
const WatchCommand = "watch-new"

// WatchNew writes a line "SRC NANOS" to out for each new conntrack entry of proto to dst in
// the current namespace, SRC its original source and NANOS when the event was read (Unix
// nanoseconds), and a line "overrun" each time the kernel dropped events; it returns when
// ctx ends. It reads the kernel's new-entry events only, with recvmmsg, so that it keeps up
// at rates where `conntrack -E` printing text does not, and writes the lines of a burst of
// events in one write at its end, from the reading goroutine: handing each line to a
// writing goroutine cost a thread switch per event, which at 30k/s made the watcher, at
// real-time priority, a load on the lab it measures.
func WatchNew(ctx context.Context, proto uint8, dst netip.AddrPort, out *os.File) error {
	l, err := conntrack.NewListenerOf(64<<20, conntrack.EventNew)
	if err != nil {
		return err
	}
	var buf []byte
	var werr error
	flush := func() {
		if len(buf) > 0 && werr == nil {
			_, werr = out.Write(buf)
		}
		buf = buf[:0]
	}
	l.SetBurstDone(flush)
	err = l.Run(ctx, func(ev conntrack.Event) {
		switch {
		case ev.Type == conntrack.EventOverrun:
			buf = append(buf, "overrun\n"...)
		case ev.Flow.Proto == proto && ev.Flow.Orig.Dst == dst:
			buf = ev.Flow.Orig.Src.AppendTo(buf)
			buf = append(buf, ' ')
			buf = strconv.AppendInt(buf, time.Now().UnixNano(), 10)
			buf = append(buf, '\n')
		}
	})
	flush()
	return errors.Join(err, werr)
}

// parseWatchLine parses a line of WatchNew.
func parseWatchLine(s string) (src netip.AddrPort, at time.Time, overrun, ok bool) {
	if s == "overrun" {
		return netip.AddrPort{}, time.Time{}, true, true
	}
	a, n, found := strings.Cut(s, " ")
	if !found {
		return netip.AddrPort{}, time.Time{}, false, false
	}
	src, err := netip.ParseAddrPort(a)
	if err != nil {
		return netip.AddrPort{}, time.Time{}, false, false
	}
	ns, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return netip.AddrPort{}, time.Time{}, false, false
	}
	return src, time.Unix(0, ns), false, true
}

// watchArgs are the arguments of the bench binary that make it WatchNew.
func watchArgs(proto uint8, dst netip.AddrPort) []string {
	return []string{WatchCommand, strconv.Itoa(int(proto)), dst.String()}
}

// RunWatch is the bench binary's WatchCommand: args are the protocol number and the
// destination; it writes to standard output until SIGTERM.
func RunWatch(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("%s PROTO DST", WatchCommand)
	}
	proto, err := strconv.Atoi(args[0])
	if err != nil {
		return err
	}
	dst, err := netip.ParseAddrPort(args[1])
	if err != nil {
		return err
	}
	return WatchNew(ctx, uint8(proto), dst, os.Stdout)
}
