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
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/appliance/control"
	"github.com/openappliance/appliance/appliance/daemon"
	"github.com/openappliance/appliance/appliance/tmsh"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "applianced:", err)
		os.Exit(1)
	}
}

func run() error {
	name := flag.String("name", "", "this device's name (cm device), such as lb1")
	configPath := flag.String("config", "/etc/appliance/appliance.toml", "device config file; the shared config lives in FILE.d/")
	socket := flag.String("socket", api.DefaultSocket, "control socket for tmsh")
	check := flag.Bool("check", false, "validate the configuration files and exit")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
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

	d, err := daemon.New(daemon.Options{Name: *name, ConfigPath: *configPath, Logger: logger})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	srv := control.NewServer(tmsh.New(d), d.PromptStatus, logger.With("component", "control"))
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		if serveErr = srv.Serve(ctx, *socket); serveErr != nil {
			cancel()
		}
	}()
	logger.Info("applianced started", "config", *configPath, "socket", *socket)
	err = d.Run(ctx)
	cancel()
	wg.Wait()
	logger.Info("applianced stopped")
	return errors.Join(err, serveErr)
}
