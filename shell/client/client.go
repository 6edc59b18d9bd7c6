// Package client talks to applianced's control API over its unix socket.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/openappliance/appliance/appliance/api"
)

// Client is a control API client. It is safe for concurrent use.
type Client struct {
	http *http.Client
}

// New returns a client of the daemon listening on socket.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{http: &http.Client{Transport: tr}}
}

// Session is the shell's state between commands.
type Session struct {
	Partition string
	Module    string
}

// CommandError is a command the daemon refused; its text is tmsh's error.
type CommandError struct{ Msg string }

func (e *CommandError) Error() string { return e.Msg }

// ErrQuit says the user typed quit or exit.
var ErrQuit = errors.New("quit")

// Exec runs command, copying its output to out as it arrives, and updates s.
func (c *Client) Exec(ctx context.Context, s *Session, command string, out io.Writer) error {
	body, err := json.Marshal(api.ExecRequest{Command: command, Partition: s.Partition, Module: s.Module})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://applianced"+api.PathExec, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach applianced: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("applianced: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		return fmt.Errorf("read from applianced: %w", err)
	}
	s.Partition = resp.Trailer.Get(api.TrailerPartition)
	s.Module = resp.Trailer.Get(api.TrailerModule)
	if msg := resp.Trailer.Get(api.TrailerError); msg != "" {
		return &CommandError{Msg: msg}
	}
	if resp.Trailer.Get(api.TrailerQuit) == "1" {
		return ErrQuit
	}
	return nil
}

// Complete asks the daemon what may come next at byte pos of line.
func (c *Client) Complete(ctx context.Context, s Session, line string, pos int) (api.CompleteResponse, error) {
	body, err := json.Marshal(api.CompleteRequest{Line: line, Pos: pos, Partition: s.Partition, Module: s.Module})
	if err != nil {
		return api.CompleteResponse{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://applianced"+api.PathComplete, bytes.NewReader(body))
	if err != nil {
		return api.CompleteResponse{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return api.CompleteResponse{}, fmt.Errorf("cannot reach applianced: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return api.CompleteResponse{}, fmt.Errorf("applianced: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	var out api.CompleteResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return api.CompleteResponse{}, fmt.Errorf("read completion: %w", err)
	}
	return out, nil
}

// Status returns what the prompt shows.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://applianced"+api.PathStatus, nil)
	if err != nil {
		return api.Status{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return api.Status{}, fmt.Errorf("cannot reach applianced: %w", err)
	}
	defer resp.Body.Close()
	var st api.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return api.Status{}, fmt.Errorf("read status: %w", err)
	}
	return st, nil
}
