package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	systemd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/openappliance/appliance/appliance/api"
)

// healthLoop proves the daemon healthy and tells systemd so. Each tick it runs probe: the
// first pass sends READY=1 (Type=notify), every later pass WATCHDOG=1 when the unit has
// WatchdogSec=. A failing or hung probe sends nothing, so systemd restarts a daemon whose
// core or control socket has stopped answering. It returns when ctx ends, after STOPPING=1.
//
// notify is sdNotify in applianced; watchdog is the unit's WatchdogSec (0: off),
// and the loop pings at a third of it so that one slow probe does not cost a restart.
func healthLoop(ctx context.Context, probe func(context.Context) error, notify func(state string) error, watchdog time.Duration, logger *slog.Logger) {
	interval := 250 * time.Millisecond // until ready, without a watchdog
	if watchdog > 0 {
		interval = watchdog / 3
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	ready, failing := false, false
	for {
		pctx, cancel := context.WithTimeout(ctx, interval)
		err := probe(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			if ready {
				notifyOrLog(notify, systemd.SdNotifyStopping, logger)
			}
			return
		case err != nil:
			if !failing && ready {
				logger.Warn("health check failed; no watchdog ping", slog.Any("err", err))
			}
			failing = true
		case !ready:
			ready, failing = true, false
			notifyOrLog(notify, systemd.SdNotifyReady, logger)
			logger.Info("ready", "watchdog", watchdog)
			if watchdog <= 0 {
				<-ctx.Done() // nothing more to tell systemd until we stop
				notifyOrLog(notify, systemd.SdNotifyStopping, logger)
				return
			}
		default:
			if failing {
				logger.Info("health check passes again")
			}
			failing = false
			notifyOrLog(notify, systemd.SdNotifyWatchdog, logger)
		}
		select {
		case <-ctx.Done():
		case <-ticker.C:
		}
	}
}

func notifyOrLog(notify func(string) error, state string, logger *slog.Logger) {
	if err := notify(state); err != nil {
		logger.Warn("sd_notify", "state", state, slog.Any("err", err))
	}
}

// systemdWatchdog is the unit's WatchdogSec= when systemd watches this process, else 0.
func systemdWatchdog() (time.Duration, error) { return systemd.SdWatchdogEnabled(false) }

// sdNotify sends state to systemd; outside systemd (no $NOTIFY_SOCKET) it does nothing.
func sdNotify(state string) error {
	_, err := systemd.SdNotify(false, state)
	return err
}

// errNotRunning is a daemon whose failover machine has not started (or has stopped).
var errNotRunning = errors.New("failover machine not running")

// statusProbe asks the daemon, through its own control socket, what the prompt shows. An
// answer proves the socket is served and the core answers: the status takes the core's lock
// and the failover machine's. A device reported Offline has not (or no longer) run its machine.
func statusProbe(socket string) func(context.Context) error {
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://applianced"+api.PathStatus, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
		defer resp.Body.Close()
		var st api.Status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return fmt.Errorf("control socket status: %w", err)
		}
		if st.FailoverState == "" || st.FailoverState == "Offline" {
			return errNotRunning
		}
		return nil
	}
}
