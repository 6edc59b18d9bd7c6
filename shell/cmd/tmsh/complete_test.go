package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/openappliance/appliance/appliance/api"
)

// fakeAsk answers like the daemon for a few lines, recording what it was asked.
type fakeAsk struct {
	lines []string
	pos   []int
}

func (f *fakeAsk) ask(line string, pos int) (api.CompleteResponse, error) {
	f.lines, f.pos = append(f.lines, line), append(f.pos, pos)
	switch line[:pos] {
	case "list ltm ":
		return api.CompleteResponse{Start: pos, Candidates: []api.Candidate{
			{Word: "pool", Help: "pools", Group: "component"},
			{Word: "virtual", Help: "virtual servers", Group: "component"},
		}}, nil
	case "list ltm vi":
		return api.CompleteResponse{Start: 9, Candidates: []api.Candidate{{Word: "virtual", Help: "virtual servers", Group: "component"}}}, nil
	case "modify ltm virtual vs destination ":
		return api.CompleteResponse{Start: pos, Candidates: []api.Candidate{{Word: "<ip-address:port>", Help: "where clients connect", Group: "value", Hint: true}}}, nil
	}
	return api.CompleteResponse{Start: pos}, nil
}

func TestCompleterDo(t *testing.T) {
	for _, tc := range []struct {
		line    string
		pos     int
		want    []string
		wantLen int
	}{
		{line: "list ltm ", pos: 9, want: []string{"pool", "virtual"}},
		{line: "list ltm vi", pos: 11, want: []string{"rtual "}, wantLen: 2},
		{line: "list ltm vi one-line", pos: 11, want: []string{"rtual "}, wantLen: 2},
		{line: "modify ltm virtual vs destination ", pos: 34, want: nil}, // a hint is never inserted
		{line: "bogus", pos: 99, want: nil},
	} {
		f := &fakeAsk{}
		got, n := completer{ask: f.ask}.Do([]rune(tc.line), tc.pos)
		var words []string
		for _, r := range got {
			words = append(words, string(r))
		}
		if diff := cmp.Diff(tc.want, words); diff != "" || n != tc.wantLen {
			t.Errorf("%q: length %d (want %d), candidates (-want +got):\n%s", tc.line, n, tc.wantLen, diff)
		}
	}
}

// TestHelpKey: '?' is taken out of the line, the listing printed, the line redisplayed.
func TestHelpKey(t *testing.T) {
	f := &fakeAsk{}
	var out bytes.Buffer
	h := helpKey{ask: f.ask, out: func() io.Writer { return &out }, prompt: func() string { return "[admin@lb1:Active:In Sync] ~ # " }}
	line := []rune("list ltm ?")
	newLine, pos, ok := h.OnChange(line, len(line), '?')
	if !ok || string(newLine) != "list ltm " || pos != 9 {
		t.Fatalf("OnChange = %q, %d, %v", string(newLine), pos, ok)
	}
	want := "[admin@lb1:Active:In Sync] ~ # list ltm ?\nComponents:\n  pool     pools\n  virtual  virtual servers\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("listing (-want +got):\n%s", diff)
	}
	// Inside a quoted value '?' is text.
	quoted := []rune(`modify ltm virtual vs description "why?`)
	if _, _, ok := h.OnChange(quoted, len(quoted), '?'); ok {
		t.Error("? inside quotes was taken as help")
	}
	// Other keys pass through.
	if _, _, ok := h.OnChange([]rune("list"), 4, 't'); ok {
		t.Error("a plain key was taken")
	}
}

func TestFormatHelpEmpty(t *testing.T) {
	if got := formatHelp(nil); !strings.Contains(got, "No completions") {
		t.Errorf("formatHelp(nil) = %q", got)
	}
}
