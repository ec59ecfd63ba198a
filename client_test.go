package main

// client_test.go: the client commands' own behaviour: -json listings and
// job control from the command line.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJSONListings: jobs and releases print one JSON object a line with
// -json, the fields of job.list and deploy.list, for scripts.
func TestJSONListings(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	ticket := startJob(t, c, map[string]any{"script": "echo hi"})
	followJob(t, c, ticket)
	pkgFile := filepath.Join(t.TempDir(), "shop.tar.gz")
	os.WriteFile(pkgFile, scriptPkg(t, "1"), 0o644)
	if _, errOut, code := a.cli("deploy", a.addr, "shop", "1.0", pkgFile); code != 0 {
		t.Fatalf("deploy: %s", errOut)
	}
	tests := []struct {
		name string
		args []string
		want map[string]string // fields of the first line
	}{
		{"jobs", []string{"jobs", "-json", a.addr}, map[string]string{"ticket": ticket, "kind": "script", "state": "done", "outcome": "success"}},
		{"releases of an app", []string{"releases", "-json", a.addr, "shop"}, map[string]string{"release": "1.0", "version": "1.0", "outcome": "success"}},
		{"apps", []string{"releases", "-json", a.addr}, map[string]string{"app": "shop", "current": "1.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := a.cli(tt.args[0], tt.args[1:]...)
			if code != 0 {
				t.Fatalf("code %d: %s", code, errOut)
			}
			first, _, _ := strings.Cut(out, "\n")
			var got map[string]any
			if err := json.Unmarshal([]byte(first), &got); err != nil {
				t.Fatalf("not a JSON line: %q (%v)", out, err)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("%s = %v, want %q (line %s)", k, got[k], v, first)
				}
			}
		})
	}
}

// TestJobCancelAndCompleteCLI: a job can be cancelled and completed from
// the command line, without hand-written job.cancel JSON.
func TestJobCancelAndCompleteCLI(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	running := startJob(t, c, map[string]any{"script": "echo started; sleep 1000"})
	if _, errOut, code := a.cli("job", "-complete", a.addr, running); code != 1 || !strings.Contains(errOut, "conflict") {
		t.Fatalf("complete of a running job: code %d, %q", code, errOut)
	}
	if _, errOut, code := a.cli("job", "-cancel", a.addr, running); code != 0 || !strings.Contains(errOut, "cancelled job "+running) {
		t.Fatalf("cancel: code %d, %q", code, errOut)
	}
	st, _ := followJob(t, c, running)
	if outcomeOf(st) != outcomeCancelled {
		t.Fatalf("after job -cancel: outcome %s", outcomeOf(st))
	}
	out, errOut, code := a.cli("job", "-complete", a.addr, running)
	if code != 0 || !strings.Contains(out, "outcome:   cancelled") || !strings.Contains(out, "started") {
		t.Fatalf("complete: code %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code := a.cli("job", a.addr, running); code != 1 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("the completed job is still there: code %d, %q", code, errOut)
	}
	if _, errOut, code := a.cli("job", "-cancel", "-follow", a.addr, running); code != 2 || !strings.Contains(errOut, "one at a time") {
		t.Fatalf("two modes: code %d, %q", code, errOut)
	}
}
