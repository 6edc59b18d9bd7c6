// Package control serves the control API on the daemon's unix socket: it hands tmsh lines
// to the interpreter and streams the output back.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/appliance/tmsh"
	"golang.org/x/sys/unix"
)

// StatusFunc reports the device's failover and sync state for the prompt.
type StatusFunc func() (host, failoverState, syncStatus string)

// Server is the control API server.
type Server struct {
	interp *tmsh.Interpreter
	status StatusFunc
	logger *slog.Logger
	// identify tells who is on the other end of a connection: peerOf, or a fake in tests.
	identify func(net.Conn) peer
	// SocketGroup, when set before Serve, is the group the socket is given: its members
	// (the users whose login shell is tmsh) may connect. The daemon still decides from each
	// caller's credentials what it may run.
	SocketGroup string
}

// NewServer returns a server running commands with interp.
func NewServer(interp *tmsh.Interpreter, status StatusFunc, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{interp: interp, status: status, logger: logger, identify: peerOf}
}

type ctxKey struct{}

// peer is who is on the other end of the socket, from SO_PEERCRED.
type peer struct {
	uid  int
	user string
}

// Serve listens on path (replacing a stale socket) until ctx ends. The socket's folder is
// created if missing (0755: whether one may connect is the socket's own mode and group).
func (s *Server) Serve(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket folder: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on control socket: %w", err)
	}
	defer os.Remove(path)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("control socket permissions: %w", err)
	}
	if err := chgrp(path, s.SocketGroup); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathExec, s.handleExec)
	mux.HandleFunc("GET "+api.PathStatus, s.handleStatus)
	mux.HandleFunc("POST "+api.PathComplete, s.handleComplete)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey{}, s.identify(c))
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	err = srv.Serve(ln)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// peerOf reads the connecting process's credentials; the daemon decides from them who calls.
func peerOf(c net.Conn) peer {
	p := peer{uid: -1, user: "unknown"}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return p
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return p
	}
	raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			p.uid = int(cred.Uid)
		}
	})
	if p.uid >= 0 {
		p.user = strconv.Itoa(p.uid)
		if u, err := user.LookupId(p.user); err == nil {
			p.user = u.Username
		}
	}
	return p
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	p, _ := r.Context().Value(ctxKey{}).(peer)
	role := s.roleOf(p)
	w.Header().Set("Trailer", api.TrailerError+", "+api.TrailerPartition+", "+api.TrailerModule+", "+api.TrailerQuit)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	sess := &tmsh.Session{User: p.user, Role: role, Partition: req.Partition, Module: req.Module}
	err := s.interp.Exec(r.Context(), sess, req.Command, w)
	quit := errors.Is(err, tmsh.ErrQuit)
	if quit {
		err = nil
	}
	switch {
	case errors.Is(err, config.ErrDenied):
		s.logger.Warn("command refused", "user", p.user, "uid", p.uid, "role", string(role), "command", req.Command, slog.Any("err", err))
		w.Header().Set(api.TrailerError, err.Error())
	case err != nil:
		s.logger.Info("command failed", "user", p.user, "command", req.Command, slog.Any("err", err))
		w.Header().Set(api.TrailerError, err.Error())
	case isMutation(req.Command):
		s.logger.Info("command", "user", p.user, "command", req.Command)
	}
	w.Header().Set(api.TrailerPartition, sess.Partition)
	w.Header().Set(api.TrailerModule, sess.Module)
	if quit {
		w.Header().Set(api.TrailerQuit, "1")
	}
}

func isMutation(cmd string) bool {
	for _, v := range []string{"create", "modify", "delete", "run", "save", "load"} {
		if len(cmd) > len(v) && cmd[:len(v)] == v {
			return true
		}
	}
	return false
}

// handleComplete answers what may come next at the cursor; it only reads.
func (s *Server) handleComplete(w http.ResponseWriter, r *http.Request) {
	var req api.CompleteRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	p, _ := r.Context().Value(ctxKey{}).(peer)
	role := s.roleOf(p)
	sess := &tmsh.Session{User: p.user, Role: role, Partition: req.Partition, Module: req.Module}
	c := s.interp.Complete(sess, req.Line, req.Pos)
	resp := api.CompleteResponse{Start: c.Start, Candidates: make([]api.Candidate, 0, len(c.Candidates))}
	for _, cand := range c.Candidates {
		if role == config.RoleNoAccess {
			break // completion would show object names that the user may not list
		}
		resp.Candidates = append(resp.Candidates, api.Candidate{Word: cand.Word, Help: cand.Help, Group: cand.Group, Hint: cand.Hint})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	p, _ := r.Context().Value(ctxKey{}).(peer)
	host, state, sync := s.status()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(api.Status{User: p.user, Host: host, FailoverState: state, SyncStatus: sync})
}
