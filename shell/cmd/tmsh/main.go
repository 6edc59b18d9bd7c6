// Command tmsh is the appliance's shell: interactive with no command, or running the
// commands given with -c or as arguments, exiting non-zero when one fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/chzyer/readline"
	"github.com/openappliance/appliance/appliance/api"
	"github.com/openappliance/appliance/shell/client"
)

func main() {
	os.Exit(run())
}

func run() int {
	socket := flag.String("socket", "", "control socket of applianced (default $"+api.SocketEnv+" or "+api.DefaultSocket+")")
	command := flag.String("c", "", "run these commands (separated by ';') and exit")
	flag.Parse()
	if *socket == "" {
		*socket = os.Getenv(api.SocketEnv)
	}
	if *socket == "" {
		*socket = api.DefaultSocket
	}
	c := client.New(*socket)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	switch {
	case *command != "":
		return runOnce(ctx, c, *command)
	case flag.NArg() > 0:
		return runOnce(ctx, c, joinArgs(flag.Args()))
	}
	return interactive(c)
}

// joinArgs rebuilds a command from bash's words, quoting those that held spaces.
func joinArgs(args []string) string {
	parts := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") {
			a = `"` + strings.ReplaceAll(a, `"`, `\"`) + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

func runOnce(ctx context.Context, c *client.Client, command string) int {
	var s client.Session
	err := c.Exec(ctx, &s, command, os.Stdout)
	if err != nil && !errors.Is(err, client.ErrQuit) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func prompt(c *client.Client, s client.Session) string {
	st, err := c.Status(context.Background())
	if err != nil {
		return "[tmsh:disconnected] # "
	}
	where := "~"
	if s.Partition != "" {
		where = "/" + s.Partition
	}
	if s.Module != "" {
		if where == "~" {
			where = s.Module
		} else {
			where += "/" + s.Module
		}
	}
	return fmt.Sprintf("[%s@%s:%s:%s] %s # ", st.User, st.Host, st.FailoverState, st.SyncStatus, where)
}

func interactive(c *client.Client) int {
	var s client.Session
	rl, err := readline.NewEx(&readline.Config{
		Prompt:          prompt(c, s),
		HistoryFile:     historyFile(),
		InterruptPrompt: "^C",
		EOFPrompt:       "quit",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer rl.Close()
	for {
		rl.SetPrompt(prompt(c, s))
		line, err := rl.Readline()
		if errors.Is(err, readline.ErrInterrupt) {
			continue // Ctrl-C cancels the line, not the shell
		}
		if errors.Is(err, io.EOF) {
			return 0
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		err = c.Exec(ctx, &s, line, rl.Stdout())
		stop()
		if errors.Is(err, client.ErrQuit) {
			return 0
		}
		if err != nil {
			fmt.Fprintln(rl.Stderr(), err)
		}
	}
}

func historyFile() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return home + "/.tmsh_history"
}
