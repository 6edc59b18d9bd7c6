// Package configsync carries the shared configuration file from one device to its peer.
//
// The sender POSTs the file to the peer's configsync address, TCP port 4353 (the port of
// BIG-IP's CMI config sync); the peer validates it, saves it and reconciles, and answers
// only then, so a sync that returns nil is in force on the peer. A file the peer refuses
// changes nothing there, and the refusal comes back as the error.
package configsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Port is the config sync port.
const Port = 4353

const path = "/v1/config-sync"

// maxConfig bounds what a peer may send.
const maxConfig = 64 << 20

// Applier applies a shared configuration file that a peer sent: validate, save, reconcile.
type Applier interface {
	ApplyShared(ctx context.Context, data []byte, from string) error
}

// Server receives config syncs on the device's configsync addresses.
type Server struct {
	listen  []netip.AddrPort
	applier Applier
	logger  *slog.Logger
}

// NewServer returns a server for the given addresses.
func NewServer(listen []netip.AddrPort, applier Applier, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{listen: listen, applier: applier, logger: logger}
}

// Run serves until ctx ends. An address that cannot be bound yet (not configured on an
// interface) is retried every second.
func (s *Server) Run(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+path, s.handle)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	for _, addr := range s.listen {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(ctx, srv, addr)
		}()
	}
	<-ctx.Done()
	shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(shutdown)
	wg.Wait()
	return nil
}

func (s *Server) serve(ctx context.Context, srv *http.Server, addr netip.AddrPort) {
	logged := false
	for {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", addr.String())
		if err == nil {
			s.logger.Info("config sync listening", "addr", addr)
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.logger.Warn("config sync server", "addr", addr, slog.Any("err", err))
			}
			return
		}
		if !logged {
			s.logger.Info("config sync address not ready, retrying", "addr", addr, slog.Any("err", err))
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxConfig))
	if err != nil {
		http.Error(w, "read config: "+err.Error(), http.StatusBadRequest)
		return
	}
	from := r.Header.Get("X-Device")
	if err := s.applier.ApplyShared(r.Context(), data, from); err != nil {
		s.logger.Warn("config sync refused", "from", from, slog.Any("err", err))
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	s.logger.Info("config sync applied", "from", from, "bytes", len(data))
	w.WriteHeader(http.StatusNoContent)
}

// Push sends the shared configuration to a peer's configsync address and waits until the
// peer has applied it or refused it.
func Push(ctx context.Context, peer netip.AddrPort, device string, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+peer.String()+path, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("config sync to %s: %w", peer, err)
	}
	req.Header.Set("X-Device", device)
	req.Header.Set("Content-Type", "application/toml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("config sync to %s: %w", peer, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return fmt.Errorf("config sync to %s refused: %s", peer, bytes.TrimSpace(msg))
}
