package mirror

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, closed at the end of the test.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case server = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// The stream's reads and writes (quiet system calls on the socket) behave as the
// connection's own: whole writes past a full socket buffer, end of stream, deadlines, wake.
func TestQuietIO(t *testing.T) {
	pipe := func(t *testing.T) (net.Conn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}
	for _, tc := range []struct {
		name  string
		conns func(t *testing.T) (net.Conn, net.Conn)
	}{
		{"tcp", tcpPair},
		{"pipe", pipe}, // no socket: the connection's own Read and Write
	} {
		t.Run(tc.name+"/big write, slow reader", func(t *testing.T) {
			w, r := tc.conns(t)
			want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: far past the socket buffers
			got := make(chan []byte, 1)
			go func() {
				var all []byte
				buf := make([]byte, 7000)
				rd := &deadlineReader{c: r, timeout: 10 * time.Second}
				for len(all) < len(want) {
					n, err := rd.Read(buf)
					all = append(all, buf[:n]...)
					if err != nil {
						break
					}
					if len(all) < 1<<20 {
						time.Sleep(time.Millisecond) // the writer meets a full buffer
					}
				}
				got <- all
			}()
			wr := &deadlineWriter{c: w, timeout: 10 * time.Second}
			if n, err := wr.Write(want); n != len(want) || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
			}
			select {
			case all := <-got:
				if !bytes.Equal(all, want) {
					t.Fatalf("read %d bytes, not the %d written", len(all), len(want))
				}
			case <-time.After(20 * time.Second):
				t.Fatal("reader did not finish")
			}
		})
		t.Run(tc.name+"/end of stream", func(t *testing.T) {
			w, r := tc.conns(t)
			go func() {
				(&deadlineWriter{c: w, timeout: 5 * time.Second}).Write([]byte("last"))
				w.Close()
			}()
			b, err := io.ReadAll(&deadlineReader{c: r, timeout: 5 * time.Second})
			if string(b) != "last" || err != nil {
				t.Fatalf("ReadAll = %q, %v; want \"last\", nil", b, err)
			}
		})
		t.Run(tc.name+"/read deadline", func(t *testing.T) {
			_, r := tc.conns(t)
			_, err := (&deadlineReader{c: r, timeout: 20 * time.Millisecond}).Read(make([]byte, 10))
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read of a silent peer: %v, want a deadline error", err)
			}
		})
		t.Run(tc.name+"/wake", func(t *testing.T) {
			w, r := tc.conns(t)
			rd := &deadlineReader{c: r, timeout: 10 * time.Second}
			time.AfterFunc(20*time.Millisecond, rd.wake)
			if _, err := rd.Read(make([]byte, 10)); !errors.Is(err, errWoken) {
				t.Fatalf("Read after wake: %v, want errWoken", err)
			}
			go (&deadlineWriter{c: w, timeout: 5 * time.Second}).Write([]byte("after"))
			b := make([]byte, 10)
			n, err := rd.Read(b)
			if string(b[:n]) != "after" || err != nil {
				t.Fatalf("Read after a wake = %q, %v; want \"after\", nil", b[:n], err)
			}
		})
	}
	t.Run("write to a closed peer", func(t *testing.T) {
		w, r := tcpPair(t)
		r.Close()
		wr := &deadlineWriter{c: w, timeout: 5 * time.Second}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := wr.Write(make([]byte, 64<<10)); err != nil {
				return // EPIPE or ECONNRESET
			}
		}
		t.Fatal("writes to a closed peer kept succeeding")
	})
}

// A write that may not wait (the Sender's direct writes) never blocks on a peer that does
// not read: it keeps what the socket does not take, and the next write that may wait sends
// that first, so the peer reads every byte in order.
func TestDeadlineWriterNoWait(t *testing.T) {
	w, r := tcpPair(t)
	dw := &deadlineWriter{c: w, timeout: 10 * time.Second}
	if !dw.canSkipWait() {
		t.Fatal("a TCP connection cannot be written without waiting")
	}
	var want []byte
	dw.noWait = true
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<12) // 64 KiB
	start := time.Now()
	for i := range 128 { // 8 MiB: far past the socket buffers, none read meanwhile
		chunk[0] = byte(i)
		n, err := dw.Write(chunk)
		if n != len(chunk) || err != nil {
			t.Fatalf("write %d without waiting: %d, %v; want %d, nil", i, n, err, len(chunk))
		}
		want = append(want, chunk...)
	}
	if len(dw.spill) == 0 {
		t.Fatal("8 MiB written to a peer that reads nothing, and nothing kept")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("writes without waiting took %v", took) // a safety bound: they waited
	}
	dw.noWait = false

	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(r)
		got <- all
	}()
	if _, err := dw.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "tail"...)
	if len(dw.spill) != 0 {
		t.Errorf("%d bytes still kept after a write that may wait", len(dw.spill))
	}
	w.Close()
	select {
	case all := <-got:
		if !bytes.Equal(all, want) {
			t.Errorf("peer read %d bytes, want %d in order", len(all), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("peer did not read to the end")
	}
}
