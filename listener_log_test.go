package main

// listener_log_test.go: what the listener logs (issue 11 #9, issue 13
// #18): rejections summarised, clients' strings clipped, hints that fit the
// cause, polls at debug, durations in seconds in JSON.

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRejectionsSummarised: a stranger retrying in a loop gets its first
// few rejections logged in full, then one summary line a period with the
// count and its address, not a line each.
func TestRejectionsSummarised(t *testing.T) {
	const period = 2 * time.Second
	a := startAgent(t, func(c *config) { c.logPeriod = period })
	stranger := newTestIdentity(t)
	const n = 40
	start := time.Now()
	for range n {
		if pingWorks(a, stranger, nil) == nil {
			t.Fatal("a stranger got in")
		}
	}
	periods := int(time.Since(start)/period) + 2 // the rejections may straddle periods
	waitFor(t, "the summary line", 10*time.Second, func() bool { return strings.Contains(a.logs.String(), "repeated=") })
	logs := a.logs.String()
	full := strings.Count(logs, "thumbprint="+stranger.thumbprint)
	if full < 1 || full > noisyBurst*periods {
		t.Fatalf("%d rejections logged in full, want 1 to %d a period:\n%s", full, noisyBurst, logs)
	}
	waitFor(t, "every rejection counted", 5*time.Second, func() bool {
		repeated := 0
		for _, l := range strings.Split(a.logs.String(), "\n") {
			if i := strings.Index(l, "repeated="); i >= 0 && strings.Contains(l, `msg="rejected client"`) {
				var k int
				fmt.Sscanf(l[i:], "repeated=%d", &k)
				repeated += k
				if !strings.Contains(l, "127.0.0.1=") || !strings.Contains(l, "not trusted=") {
					t.Fatalf("summary %q lacks the source or the reason", l)
				}
			}
		}
		return full+repeated == n
	})
}

// TestRejectionHints: the fix offered fits the cause: an unknown key gets
// the trust add command for this agent's home, a known key refused by
// expires= or from= gets told about that option, and with -trust-file the
// file to edit.
func TestRejectionHints(t *testing.T) {
	stranger, expired, elsewhere := newTestIdentity(t), newTestIdentity(t), newTestIdentity(t)
	a := startAgent(t)
	writeTrust(t, a.home, a.client.thumbprint+" test-client\n"+
		expired.thumbprint+" expires=2001-01-01 old box\n"+
		elsewhere.thumbprint+" from=10.0.0.0/8,192.168.1.7 far box\n")
	trustFile := t.TempDir() + "/trust"
	b := startAgent(t, func(c *config) { c.TrustFile = trustFile })
	tests := []struct {
		name  string
		agent *testAgent
		id    *identity
		want  string
	}{
		{"unknown key", a, stranger, `fix="if this client should be trusted: tentacle trust add -home ` + a.home + " " + stranger.thumbprint + `"`},
		{"expired entry", a, expired, `its trust entry \"old box\" has expired: give it a later expires= (or none) in \"` + homeTrustPath(a.home) + `\"`},
		{"from= refuses", a, elsewhere, `admits only from=10.0.0.0/8,192.168.1.7/32: add 127.0.0.1 to that option`},
		{"unknown key, trust file elsewhere", b, stranger, `add the line \"` + stranger.thumbprint + ` NAME\" to the trust file \"` + trustFile + `\"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if pingWorks(tt.agent, tt.id, nil) == nil {
				t.Fatal("got in")
			}
			waitFor(t, "the rejection's hint", 5*time.Second, func() bool { return strings.Contains(tt.agent.logs.String(), tt.want) })
		})
	}
	if logs := a.logs.String(); strings.Contains(logs, "trust add -home "+a.home+" "+expired.thumbprint) {
		t.Fatalf("a known, expired key was told to trust add:\n%s", logs)
	}
}

// TestClientStringsClipped: an unknown method of 1 MB, or a member of
// that size, is named in the answer and in the log by its first bytes and
// its length, not in full.
func TestClientStringsClipped(t *testing.T) {
	a := startAgent(t)
	long := strings.Repeat("m", 1000000)
	c := a.dial(t)
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"unknown method", func() error { return c.call(long, nil, nil) }},
		{"unknown member", func() error {
			c.tc.Write([]byte(`{"id":1,"method":"ping","` + long + `":1}` + "\n"))
			return c.receive(nil)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil || len(err.Error()) > 1000 || !strings.Contains(err.Error(), "…(1000000 bytes)") {
				t.Fatalf("answer of %d bytes: %.200q", len(fmt.Sprint(err)), fmt.Sprint(err))
			}
		})
	}
	waitFor(t, "the request lines", 5*time.Second, func() bool { return strings.Count(a.logs.String(), "msg=request") >= 2 })
	for _, l := range strings.Split(a.logs.String(), "\n") {
		if len(l) > 2000 {
			t.Fatalf("a log line of %d bytes: %.300q", len(l), l)
		}
	}
}

// TestRequestLogLevels: a job followed with exec logs its changing
// requests at info and its job.status polls at debug; a failing read-only
// request is still logged at info.
func TestRequestLogLevels(t *testing.T) {
	a := startAgent(t)
	if out, stderr, code := a.cli("exec", a.addr, "--", "echo hi"); code != 0 || out != "hi\n" {
		t.Fatalf("exec: code %d, %q, %q", code, out, stderr)
	}
	c := a.dial(t)
	if err := c.call("ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.call("job.status", map[string]string{"ticket": "no-such-ticket"}, nil); rpcKind(err) != kindNotFound {
		t.Fatalf("job.status of no ticket: %v", err)
	}
	waitFor(t, "the failed poll's line", 5*time.Second, func() bool { return strings.Contains(a.logs.String(), "outcome=not_found") })
	logs := a.logs.String()
	for _, want := range []string{"method=script.start", "method=job.complete", "method=job.status duration"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q at info", want)
		}
	}
	if n := strings.Count(logs, "method=job.status"); n != 1 {
		t.Errorf("%d job.status lines at info, want only the failed one:\n%s", n, logs)
	}
	if strings.Contains(logs, "method=ping") {
		t.Errorf("ping logged at info:\n%s", logs)
	}
}

// TestJSONLogDurationsInSeconds: with -log-format json, durations are a
// number of seconds (0.002), not nanoseconds; text logs keep Go's form.
func TestJSONLogDurationsInSeconds(t *testing.T) {
	a := startAgent(t, func(c *config) { c.LogFormat = "json" })
	c := a.dial(t)
	if err := c.call("job.status", map[string]string{"ticket": "none"}, nil); rpcKind(err) != kindNotFound {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, "the connection's line", 5*time.Second, func() bool { return strings.Contains(a.logs.String(), `"msg":"connection"`) })
	seen := 0
	for _, l := range strings.Split(strings.TrimSpace(a.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON", l)
		}
		if d, ok := m["duration"]; ok {
			seen++
			if s, ok := d.(float64); !ok || s < 0 || s > 10 || s == float64(int64(s)) && s != 0 {
				t.Fatalf("duration %v in %q is not seconds", d, l)
			}
		}
	}
	if seen < 2 {
		t.Fatalf("%d lines with a duration, want the request's and the connection's", seen)
	}
	b := startAgent(t)
	bc := b.dial(t)
	bc.call("job.status", map[string]string{"ticket": "none"}, nil)
	waitFor(t, "the text request line", 5*time.Second, func() bool { return strings.Contains(b.logs.String(), "outcome=not_found") })
	if !strings.Contains(b.logs.String(), "µs outcome=not_found") {
		t.Fatalf("text log lost Go's duration form:\n%s", b.logs)
	}
}
