package main

// jobs_ticket_test.go: client-chosen tickets (retried starts are
// idempotent, PROTOCOL §5) and jobs belonging to the client that started
// them (issue 11 #3).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startReply is script.start's and deploy.start's answer.
type startReply struct {
	Ticket string `json:"ticket"`
	State  string `json:"state"`
}

// ranLines counts the lines a script appended to path: how often it ran.
func ranLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func listTickets(t *testing.T, c *clientConn) []string {
	t.Helper()
	var list struct {
		Jobs []jobListItem `json:"jobs"`
	}
	if err := c.call("job.list", nil, &list); err != nil {
		t.Fatalf("job.list: %v", err)
	}
	var out []string
	for _, j := range list.Jobs {
		out = append(out, j.Ticket)
	}
	return out
}

func TestClientChosenTicket(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	c := a.dial(t)
	outer := t // subtests' connections outlive them
	ran := filepath.Join(t.TempDir(), "ran")
	ticket := "build-4711-step-3-attempt"
	params := `{"script":"echo ran >> \"$1\"; echo hello","args":["` + ran + `"],"timeout_s":30,"ticket":"` + ticket + `"}`
	// The same parameters spelt differently: other key order, white space,
	// number spelling and string escapes.
	respelt := `{ "ticket":"` + ticket + `", "timeout_s":3e1, "args":["` + ran + `"], "script":"echo ran >> \"$1\"; echo hell\u006f" }`

	var first startReply
	if err := c.call("script.start", json.RawMessage(params), &first); err != nil {
		t.Fatalf("script.start with a ticket: %v", err)
	}
	if first.Ticket != ticket || (first.State != stateQueued && first.State != stateRunning) {
		t.Fatalf("first start answered %+v", first)
	}
	var again startReply
	if err := c.call("script.start", json.RawMessage(respelt), &again); err != nil || again.Ticket != ticket {
		t.Fatalf("retried start: %+v, %v", again, err)
	}
	st, logs := followJob(t, c, ticket)
	if outcomeOf(st) != outcomeSuccess || strings.Join(texts(logs, "stdout"), "|") != "hello" {
		t.Fatalf("job: %s %v", outcomeOf(st), logs)
	}
	if err := c.call("script.start", json.RawMessage(params), &again); err != nil || again.Ticket != ticket || again.State != stateDone {
		t.Fatalf("retry of a finished job: %+v, %v (want its state now, done)", again, err)
	}
	if n := ranLines(t, ran); n != 1 {
		t.Fatalf("the script ran %d times for three starts of one ticket", n)
	}

	t.Run("other parameters are conflict", func(t *testing.T) {
		other := strings.Replace(params, "hello", "bye", 1)
		err := c.call("script.start", json.RawMessage(other), nil)
		if rpcKind(err) != kindConflict || !strings.Contains(err.Error(), "taken by another job") {
			t.Fatalf("start with the ticket and other parameters: %v", err)
		}
		if st := statusOf(t, c, ticket); outcomeOf(st) != outcomeSuccess || len(st.Logs) != 1 {
			t.Fatalf("the first job changed: %+v", st)
		}
	})

	t.Run("a retry after a restart is still idempotent", func(t *testing.T) {
		a.restart()
		c = a.dial(outer)
		var r startReply
		if err := c.call("script.start", json.RawMessage(params), &r); err != nil || r.State != stateDone {
			t.Fatalf("retry after restart: %+v, %v", r, err)
		}
		if err := c.call("script.start", json.RawMessage(strings.Replace(params, "hello", "bye", 1)), nil); rpcKind(err) != kindConflict {
			t.Fatalf("other parameters after restart: %v", err)
		}
		if n := ranLines(t, ran); n != 1 {
			t.Fatalf("the script ran %d times", n)
		}
	})

	t.Run("a completed ticket may be used again", func(t *testing.T) {
		if err := c.call("job.complete", map[string]any{"ticket": ticket}, nil); err != nil {
			t.Fatal(err)
		}
		if st, _ := runScriptRaw(t, c, params); outcomeOf(st) != outcomeSuccess {
			t.Fatalf("reused ticket: %s", outcomeOf(st))
		}
		if n := ranLines(t, ran); n != 2 {
			t.Fatalf("the script ran %d times, want 2 (once per life of the ticket)", n)
		}
	})

	t.Run("concurrent retries start one job", func(t *testing.T) {
		ran := filepath.Join(t.TempDir(), "ran")
		p := map[string]any{"script": `echo ran >> "$1"`, "args": []string{ran}, "ticket": "concurrent-retries-0001"}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() {
				cc := a.dial(outer)
				var r startReply
				errs[i] = cc.call("script.start", p, &r)
				if errs[i] == nil && r.Ticket != "concurrent-retries-0001" {
					errs[i] = &rpcError{Message: "ticket " + r.Ticket}
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("concurrent start: %v", err)
			}
		}
		followJob(t, c, "concurrent-retries-0001")
		if n := ranLines(t, ran); n != 1 {
			t.Fatalf("eight concurrent starts of one ticket ran %d jobs", n)
		}
	})

	t.Run("bad tickets", func(t *testing.T) {
		before := listTickets(t, c)
		for _, tt := range []struct{ name, ticket string }{
			{"15 characters", "abcdefghijklmno"},
			{"65 characters", strings.Repeat("a", 65)},
			{"upper case", "ABCDEFGHIJKLMNOP"},
			{"a path", "../../../etc/passwd"},
			{"a dot", "abcdefgh.ijklmnop"},
			{"an underscore", "abcdefgh_ijklmnop"},
			{"a NUL", "abcdefghijklmnop\x00"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				for _, m := range []string{"script.start", "deploy.start"} {
					p := map[string]any{"script": "true", "ticket": tt.ticket}
					if m == "deploy.start" {
						p = map[string]any{"app": "web", "version": "1", "package": strings.Repeat("0", 64), "ticket": tt.ticket}
					}
					err := c.call(m, p, nil)
					if rpcKind(err) != kindInvalidParams || !strings.Contains(err.Error(), "16 to 64 of a-z 0-9 -") {
						t.Fatalf("%s ticket %q: %v", m, tt.ticket, err)
					}
				}
			})
		}
		if after := listTickets(t, c); strings.Join(after, ",") != strings.Join(before, ",") {
			t.Fatalf("a refused start left a job: %v, was %v", after, before)
		}
		ents, _ := os.ReadDir(a.cfg.workDir())
		for _, e := range ents {
			if strings.Contains(e.Name(), "passwd") || strings.Contains(e.Name(), "ABC") {
				t.Fatalf("a refused ticket reached the file system: %q", e.Name())
			}
		}
	})

	t.Run("the longest ticket and the minted form", func(t *testing.T) {
		long := strings.Repeat("0123456789-", 6)[:64]
		if st, _ := runScript(t, c, map[string]any{"script": "true", "ticket": long}); st.Ticket != long {
			t.Fatalf("64-character ticket: %+v", st)
		}
		minted := startJob(t, c, map[string]any{"script": "true"})
		if len(minted) != 16 || strings.Trim(minted, "0123456789abcdef") != "" {
			t.Fatalf("minted ticket %q: want 16 hex digits", minted)
		}
		var r startReply
		if err := c.call("script.start", map[string]any{"script": "true", "ticket": minted}, &r); err != nil || r.Ticket != minted {
			t.Fatalf("a minted ticket sent back with the same parameters: %+v, %v", r, err)
		}
	})
}

// runScriptRaw starts a script from raw params and follows it to its end.
func runScriptRaw(t *testing.T, c *clientConn, params string) (*statusReply, []logEntry) {
	t.Helper()
	var r startReply
	if err := c.call("script.start", json.RawMessage(params), &r); err != nil {
		t.Fatalf("script.start: %v", err)
	}
	return followJob(t, c, r.Ticket)
}

func TestDeployStartTicket(t *testing.T) {
	needSh(t)
	logs := &syncBuffer{}
	a := startAgentLogging(t, logs)
	c := a.dial(t)
	sha := push(t, c, scriptPkg(t, "1.0"))
	params := map[string]any{"app": "web", "version": "1.0", "package": sha, "ticket": "deploy-web-1-0-try"}
	var first, again startReply
	if err := c.call("deploy.start", params, &first); err != nil || first.Ticket != "deploy-web-1-0-try" {
		t.Fatalf("deploy.start with a ticket: %+v, %v", first, err)
	}
	if err := c.call("deploy.start", params, &again); err != nil || again.Ticket != first.Ticket {
		t.Fatalf("retried deploy.start: %+v, %v", again, err)
	}
	st, _ := followJob(t, c, first.Ticket)
	if outcomeOf(st) != outcomeSuccess {
		t.Fatalf("deploy: %s", outcomeOf(st))
	}
	if l := list(t, c, "web"); len(l.Releases) != 1 {
		t.Fatalf("two starts of one ticket made %d releases: %+v", len(l.Releases), l.Releases)
	}
	other := map[string]any{"app": "web", "version": "1.1", "package": sha, "ticket": "deploy-web-1-0-try"}
	if err := c.call("deploy.start", other, nil); rpcKind(err) != kindConflict {
		t.Fatalf("deploy.start with the ticket and another version: %v", err)
	}
	// The retry took no lasting hold on the package: it can be pruned.
	a.srv.apps.mu.Lock()
	held := a.srv.apps.pending[sha]
	a.srv.apps.mu.Unlock()
	if held != 0 {
		t.Fatalf("package %s still held %d times after the deploy ended", sha, held)
	}
	// One INFO line for the finished deploy, with its app and version.
	waitFor(t, "the finished line", 5*time.Second, func() bool { return strings.Contains(logs.String(), "msg=\"job finished\" ticket="+first.Ticket) })
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "job finished") && strings.Contains(line, first.Ticket) {
			for _, want := range []string{"level=INFO", "kind=deploy", "outcome=success", "duration=", "client=test-client", "app=web", "version=1.0"} {
				if !strings.Contains(line, want) {
					t.Fatalf("finished line %q lacks %q", line, want)
				}
			}
		}
	}
}

// TestJobsBelongToTheirClient: a client sees and touches only its own jobs
// unless its entry is unrestricted or has allow=jobs; another client's
// ticket reads exactly like an unknown one.
func TestJobsBelongToTheirClient(t *testing.T) {
	needSh(t)
	a := startAgent(t)
	owner, other, reader, overseer := newTestIdentity(t), newTestIdentity(t), newTestIdentity(t), newTestIdentity(t)
	writeTrust(t, a.home, a.client.thumbprint+" admin\n"+
		owner.thumbprint+" allow=script owner\n"+
		other.thumbprint+" allow=script,deploy other\n"+
		reader.thumbprint+" allow=read reader\n"+
		overseer.thumbprint+" allow=jobs overseer\n")
	dial := func(id *identity) *clientConn {
		c, err := dialAgent(a.addr, id, a.thumbprint, "", 10*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	oc, xc, rc, jc, ac := dial(owner), dial(other), dial(reader), dial(overseer), a.dial(t)
	secret := startJob(t, oc, map[string]any{"script": "echo the secret; sleep 1000"})
	waitFor(t, "the secret printed", 10*time.Second, func() bool { return len(statusOf(t, oc, secret).Logs) > 0 })
	const unknown = "0123456789abcdef"

	// Whatever another client asks about the job, the answer is the one for
	// an unknown ticket, word for word but the ticket.
	for _, c := range []struct {
		name string
		cc   *clientConn
	}{{"another script client", xc}, {"a read-only client", rc}} {
		for _, m := range []string{"job.status", "job.cancel", "job.complete"} {
			t.Run(c.name+" "+m, func(t *testing.T) {
				errOther := c.cc.call(m, map[string]any{"ticket": secret}, nil)
				errUnknown := c.cc.call(m, map[string]any{"ticket": unknown}, nil)
				if m == "job.cancel" || m == "job.complete" {
					if c.cc == rc {
						if rpcKind(errOther) != kindForbidden || rpcKind(errUnknown) != kindForbidden {
							t.Fatalf("%s from allow=read: %v / %v, want forbidden", m, errOther, errUnknown)
						}
						return
					}
				}
				if rpcKind(errOther) != kindNotFound || errOther.Error() != strings.ReplaceAll(errUnknown.Error(), unknown, secret) {
					t.Fatalf("%s of another client's job: %v (%s); of an unknown one: %v", m, errOther, rpcKind(errOther), errUnknown)
				}
			})
		}
		if got := listTickets(t, c.cc); len(got) != 0 {
			t.Fatalf("%s lists %v", c.name, got)
		}
	}
	// Starting a job under another client's ticket is refused as a
	// mismatched retry is: nothing tells the two apart.
	var r startReply
	if err := oc.call("script.start", map[string]any{"script": "true", "ticket": "owned-by-the-owner-1"}, &r); err != nil {
		t.Fatal(err)
	}
	errTheirs := xc.call("script.start", map[string]any{"script": "true", "ticket": "owned-by-the-owner-1"}, nil)
	errMine := oc.call("script.start", map[string]any{"script": "false", "ticket": "owned-by-the-owner-1"}, nil)
	if rpcKind(errTheirs) != kindConflict || errTheirs.Error() != errMine.Error() {
		t.Fatalf("start under another client's ticket: %v; under one's own with other parameters: %v", errTheirs, errMine)
	}
	if st := statusOf(t, oc, secret); st.State != stateRunning {
		t.Fatalf("the owner's job is %s after the others tried it", st.State)
	}

	t.Run("the owner sees its own", func(t *testing.T) {
		if got := listTickets(t, oc); len(got) != 2 {
			t.Fatalf("owner lists %v", got)
		}
	})
	t.Run("allow=jobs and unrestricted entries see and touch all", func(t *testing.T) {
		for _, c := range []*clientConn{jc, ac} {
			if got := listTickets(t, c); len(got) != 2 {
				t.Fatalf("lists %v, want both of the owner's jobs", got)
			}
			if st := statusOf(t, c, secret); len(st.Logs) == 0 || st.Logs[0].Text != "the secret" {
				t.Fatalf("status: %+v", st)
			}
		}
		if err := jc.call("script.start", map[string]any{"script": "true"}, nil); rpcKind(err) != kindForbidden {
			t.Fatalf("allow=jobs may start a script: %v", err)
		}
		if err := jc.call("job.cancel", map[string]any{"ticket": secret}, nil); err != nil {
			t.Fatalf("allow=jobs cancels: %v", err)
		}
		if st, _ := followJob(t, oc, secret); outcomeOf(st) != outcomeCancelled {
			t.Fatalf("after the overseer's cancel: %s", outcomeOf(st))
		}
		if err := jc.call("job.complete", map[string]any{"ticket": secret}, nil); err != nil {
			t.Fatalf("allow=jobs completes: %v", err)
		}
	})

	t.Run("jobs journaled without an owner", func(t *testing.T) {
		done := startJob(t, oc, map[string]any{"script": "echo old"})
		followJob(t, oc, done)
		a.stop()
		// What an agent from before owners were recorded left behind.
		path := filepath.Join(a.cfg.workDir(), journalName)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var kept []string
		for line := range strings.Lines(string(b)) {
			var st map[string]any
			if json.Unmarshal([]byte(line), &st) != nil {
				t.Fatalf("journal line %q", line)
			}
			delete(st, "owner")
			nb, _ := json.Marshal(st)
			kept = append(kept, string(nb)+"\n")
		}
		if err := os.WriteFile(path, []byte(strings.Join(kept, "")), 0o600); err != nil {
			t.Fatal(err)
		}
		a.cfg.Listen = "127.0.0.1:0"
		a.start()
		oc, jc, ac = dial(owner), dial(overseer), a.dial(t)
		if err := oc.call("job.status", map[string]any{"ticket": done}, nil); rpcKind(err) != kindNotFound {
			t.Fatalf("an ownerless job read by a restricted client: %v", err)
		}
		for _, c := range []*clientConn{jc, ac} {
			if st := statusOf(t, c, done); outcomeOf(st) != outcomeSuccess {
				t.Fatalf("an ownerless job read by allow=jobs or an unrestricted entry: %+v", st)
			}
		}
	})
}
