package tmsh

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// streamCore lists its connections one by one, letting the test look at what the client
// has been sent between two rows.
type streamCore struct {
	*fakeCore
	between func(row int)
}

func (c streamCore) Connections(_ context.Context, _ ConnFilter, fn func(Connection) error) error {
	for i, conn := range c.conns {
		if err := fn(conn); err != nil {
			return err
		}
		c.between(i + 1)
	}
	return nil
}

// flushRecorder is an HTTP response as the listing sees it: a writer that buffers until
// it is flushed. sent is what a client would have received.
type flushRecorder struct {
	pending, sent bytes.Buffer
}

func (r *flushRecorder) Write(p []byte) (int, error) { return r.pending.Write(p) }
func (r *flushRecorder) Flush()                      { r.sent.Write(r.pending.Bytes()); r.pending.Reset() }

// TestShowConnectionsSendsFirstRowAtOnce: a listing of a million rows takes seconds; the
// client sees the first row as soon as the dump reaches it, not once 64 KB of rows are
// written.
func TestShowConnectionsSendsFirstRowAtOnce(t *testing.T) {
	_, core := newTestInterpreter(t)
	var out flushRecorder
	sentAfter := map[int]string{}
	in := New(streamCore{fakeCore: core, between: func(row int) { sentAfter[row] = out.sent.String() }})
	if err := in.Exec(context.Background(), &Session{User: "admin"}, "show sys connection", &out); err != nil {
		t.Fatal(err)
	}
	if got := sentAfter[1]; !strings.HasPrefix(got, "Sys::Connections\n10.0.0.1:38996 ") || strings.Count(got, "\n") != 2 {
		t.Errorf("sent after the first row:\n%s\nwant the header and that row", got)
	}
	out.Flush()
	if got := strings.Count(out.sent.String(), "\n"); got != 1+len(core.conns)+1 {
		t.Errorf("sent %d lines in all:\n%s", got, out.sent.String())
	}
}

// TestShowSysFailoverCauses: the failovers are counted by cause under BIG-IP's one line.
func TestShowSysFailoverCauses(t *testing.T) {
	st := (&fakeCore{}).Failover()
	st.Since = time.Now().Add(-(26*time.Hour + 3*time.Minute + 4*time.Second))
	var b strings.Builder
	if err := showSysFailover(&b, st); err != nil {
		t.Fatal(err)
	}
	want := `--------------------------------------
Sys::Failover
--------------------------------------
Failover active for 1d 02:03:04
Failovers            3
  no_peer            1
  peer_lost          1
  forced             1
Heartbeats Sent      7200
Heartbeats Received  7190
Heartbeats Lost      4
GARPs Sent           12
`
	if b.String() != want {
		t.Errorf("show sys failover:\n%s\nwant:\n%s", b.String(), want)
	}
}
