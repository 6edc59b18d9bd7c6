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
	"sync"
	"time"

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
	switch s.Partition {
	case "":
	case "/": // the root folder
		where = "/"
	default:
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
	st := &shellState{}
	ask := func(line string, pos int) (api.CompleteResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return c.Complete(ctx, st.session(), line, pos)
	}
	var rl *readline.Instance
	rl, err := readline.NewEx(&readline.Config{
		Prompt:          prompt(c, client.Session{}),
		HistoryFile:     historyFile(),
		InterruptPrompt: "^C",
		EOFPrompt:       "quit",
		AutoComplete:    completer{ask: ask},
		Listener:        helpKey{ask: ask, out: func() io.Writer { return rl.Stdout() }, prompt: st.currentPrompt},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer rl.Close()
	for {
		s := st.session()
		p := prompt(c, s)
		st.set(s, p)
		rl.SetPrompt(p)
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
		st.set(s, p)
		if errors.Is(err, client.ErrQuit) {
			return 0
		}
		if err != nil {
			fmt.Fprintln(rl.Stderr(), err)
		}
	}
}

// shellState is the session and prompt that the command loop keeps and that completion,
// on readline's goroutine, reads.
type shellState struct {
	mu     sync.Mutex
	s      client.Session
	prompt string
}

func (st *shellState) session() client.Session {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.s
}

func (st *shellState) currentPrompt() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.prompt
}

func (st *shellState) set(s client.Session, prompt string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.s, st.prompt = s, prompt
}

func historyFile() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return home + "/.tmsh_history"
}
