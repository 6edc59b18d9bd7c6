// Command applianced is the appliance daemon: it programs the kernel for NAT load
// balancing, runs the HA pair (heartbeats, failover, connection mirroring, config sync) and
// serves tmsh on its control socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/appliance/control"
	"github.com/openappliance/appliance/appliance/daemon"
	"github.com/openappliance/appliance/appliance/tmsh"
	"github.com/openappliance/appliance/ha/failover"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == failover.PacerArg {
		// The daemon's heartbeat pacer, started by the daemon itself.
		if err := failover.RunPacerProcess(); err != nil {
			fmt.Fprintln(os.Stderr, "applianced:", err)
			os.Exit(1)
		}
		return
	}
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "applianced:", err)
		os.Exit(1)
	}
}

// gcPercent is the daemon's GOGC unless the environment sets one. Most of a standby's heap
// is its set of mirrored entries, in pointer-free maps that a collection does not scan: at
// 25% growth instead of Go's 100% a collection comes every few seconds under churn and costs
// a few milliseconds of CPU, and the resident memory stays near the live set. Measured in the
// lab with a million entries and 10k new flows/s: 106-112 MB instead of 147 MB.
const gcPercent = 25

func run() error {
	name := flag.String("name", "", "this device's name (cm device), such as lb1")
	configPath := flag.String("config", "/etc/appliance/appliance.toml", "device config file; the shared config lives in FILE.d/")
	socket := flag.String("socket", api.DefaultSocket, "control socket for tmsh")
	socketGroup := flag.String("socket-group", "", "group given the control socket (mode 0660), such as appliance: its members may run tmsh; empty: the daemon's own group")
	check := flag.Bool("check", false, "validate the configuration files and exit")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	metricsAddr := flag.String("metrics", "", "serve Prometheus metrics on this management address:port (such as 192.0.2.5:9410); empty: off")
	eventBuffer := flag.Int("event-buffer", 0, "conntrack event socket receive buffer in bytes (0: 32 MiB)")
	eventLinger := flag.Duration("event-linger", 0, "on the active, how long the event reader waits once the socket is empty while events come at over 2000/s, to read them in batches (0: 1ms; negative: never)")
	digestInterval := flag.Duration("digest-interval", 0, "how often the active sends the standby a digest of the mirrored table to check (0: 10s; negative: never)")
	tickle := flag.Bool("tickle", true, "after a takeover, make the TCP connections taken over retransmit at once instead of after their back-off (false: leave them to their own timers)")
	flag.Parse()

	if *check {
		if err := daemon.Check(*configPath, *name); err != nil {
			return err
		}
		fmt.Println("configuration is valid")
		return nil
	}
	if *name == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--name is required: %w", err)
		}
		*name = host
	}
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &level})).With("device", *name)

	d, err := daemon.New(daemon.Options{Name: *name, ConfigPath: *configPath, Logger: logger, EventBuffer: *eventBuffer, EventLinger: *eventLinger, DigestInterval: *digestInterval, NoTickle: !*tickle, PacerProcess: pacerProcess(logger)})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	srv := control.NewServer(tmsh.New(d), d.PromptStatus, logger.With("component", "control"))
	srv.SocketGroup = *socketGroup
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		if serveErr = srv.Serve(ctx, *socket); serveErr != nil {
			cancel()
		}
	}()
	if *metricsAddr != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serveMetrics(ctx, *metricsAddr, d.Collector()); err != nil {
				logger.Error("metrics server", slog.Any("err", err))
			}
		}()
	}
	watchdog, err := systemdWatchdog()
	if err != nil {
		logger.Warn("systemd watchdog settings", slog.Any("err", err))
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		healthLoop(ctx, statusProbe(*socket), sdNotify, watchdog, logger.With("component", "health"))
	}()
	logger.Info("applianced started", "config", *configPath, "socket", *socket)
	err = d.Run(ctx)
	cancel()
	wg.Wait()
	logger.Info("applianced stopped")
	return errors.Join(err, serveErr)
}

// serveMetrics serves /metrics on addr until ctx ends, with the daemon's figures and the
// process's own.
func serveMetrics(ctx context.Context, addr string, c prometheus.Collector) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// pacerProcess is the executable that runs the heartbeat pacer process: this one.
func pacerProcess(logger *slog.Logger) string {
	exe, err := os.Executable()
	if err != nil {
		logger.Warn("heartbeat pacer runs as a thread", slog.Any("err", err))
		return ""
	}
	return exe
}
