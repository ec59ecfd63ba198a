package main

// listener_budget_test.go: budgets once a client is trusted (issue 11 #7,
// issue 13 #19): connections per key, a request line's deadline from its
// first byte, the memory all long lines may hold, and a reader that stalls.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// keyWaiting is how many connections of key wait for a turn.
func keyWaiting(a *testAgent, key string) int {
	a.srv.keys.mu.Lock()
	defer a.srv.keys.mu.Unlock()
	if l := a.srv.keys.lines[key]; l != nil {
		return len(l.waiters)
	}
	return 0
}

// TestConnsPerKeyCap: one key is served on at most -max-conns-per-key
// connections at once; more wait their turn (their requests are answered
// when one ends), up to three times as many; past that a connection is
// answered too_large and closed. Another key is served all along.
func TestConnsPerKeyCap(t *testing.T) {
	other := newTestIdentity(t)
	a := startAgent(t, func(c *config) { c.Limits.MaxConnsPerKey = 2 })
	writeTrust(t, a.home, a.client.thumbprint+" test-client\n"+other.thumbprint+" other\n")
	served := []*clientConn{a.dial(t), a.dial(t)}
	for _, c := range served {
		if err := c.call("ping", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The third waits, its ping unread, until a turn is free.
	third := a.dial(t)
	if err := third.send("ping", nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the third connection to wait for a turn", 5*time.Second, func() bool { return keyWaiting(a, a.client.thumbprint) == 1 })
	if err := pingWorks(a, other, nil); err != nil {
		t.Fatalf("another key while this one is at its cap: %v", err)
	}
	served[0].Close()
	third.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := third.receive(nil); err != nil {
		t.Fatalf("the waiting connection's ping, once a turn was free: %v", err)
	}
	// 2 served and 6 waiting is the most: the next is refused.
	for range 6 {
		a.dial(t)
	}
	waitFor(t, "six connections to wait", 5*time.Second, func() bool { return keyWaiting(a, a.client.thumbprint) == 6 })
	refused := a.dial(t)
	refused.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	err := refused.call("ping", nil, nil)
	if rpcKind(err) != kindTooLarge || !strings.Contains(err.Error(), "-max-conns-per-key 2") {
		t.Fatalf("a connection past the key's share: %v, want too_large naming -max-conns-per-key", err)
	}
	if err := pingWorks(a, other, nil); err != nil {
		t.Fatalf("another key: %v", err)
	}
}

// TestLineDeadlineFromFirstByte: a request line must arrive within
// -line-timeout of its first byte, however its bytes trickle in (one byte
// per read no longer resets a deadline); the clock starts with the line's
// first byte, not while the connection is idle.
func TestLineDeadlineFromFirstByte(t *testing.T) {
	a := startAgent(t, func(c *config) { c.Limits.LineTimeout = time.Second })
	t.Run("a line a byte at a time", func(t *testing.T) {
		tc := trustedTLS(t, a)
		go func() {
			for _, b := range []byte(`{"id":1,"method":"ping"}` + "\n") {
				if _, err := tc.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond) // the slow client under test
			}
		}()
		start := time.Now()
		got := readAnswers(tc, bufio.NewReader(tc), 2, 5*time.Second)
		if len(got) != 1 || !strings.Contains(got[0], `"code":1004`) || !strings.Contains(got[0], "-line-timeout") || strings.Contains(got[0], "pong") {
			t.Fatalf("answers %q, want one too_large naming -line-timeout", got)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Fatalf("the slow line was cut off after %v, want about 1s", d)
		}
	})
	t.Run("idle, then a prompt line", func(t *testing.T) {
		c := a.dial(t)
		if err := c.call("ping", nil, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // idle past the line timeout: that is the point
		if err := c.call("ping", nil, nil); err != nil {
			t.Fatalf("a line after an idle spell longer than -line-timeout: %v", err)
		}
	})
	if !strings.Contains(a.logs.String(), "request line not complete within -line-timeout") {
		t.Fatalf("the connection's end does not say why:\n%s", a.logs)
	}
}

// TestLongLinesMemoryBudget: past -max-line-memory, held by long lines
// still being received, a connection starting another long line is
// answered too_large and closed; the memory comes back when a line ends,
// and short lines are served throughout.
func TestLongLinesMemoryBudget(t *testing.T) {
	a := startAgent(t, func(c *config) { c.Limits.MaxLineMemory = 1 << 20 })
	holder := trustedTLS(t, a)
	go holder.Write([]byte(`{"id":1,"method":"ping","params":{"x":"` + strings.Repeat("a", 900<<10)))
	waitFor(t, "the first long line to hold the budget", 10*time.Second, func() bool { return a.srv.lineMem.used.Load() >= 1<<20 })
	second := trustedTLS(t, a)
	go second.Write([]byte(`{"id":2,"method":"ping","params":{"x":"` + strings.Repeat("b", 300<<10)))
	got := readAnswers(second, bufio.NewReader(second), 2, 10*time.Second)
	if len(got) != 1 || !strings.Contains(got[0], `"code":1004`) || !strings.Contains(got[0], "-max-line-memory") {
		t.Fatalf("a long line past the budget: answers %q, want one too_large naming -max-line-memory", got)
	}
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatalf("a short line while the budget is full: %v", err)
	}
	io.WriteString(holder, `"}}`+"\n")
	if got := readAnswers(holder, bufio.NewReader(holder), 1, 10*time.Second); len(got) != 1 || !strings.Contains(got[0], `unknown field \"x\"`) {
		t.Fatalf("the first long line, completed: %q", got)
	}
	waitFor(t, "the budget to be given back", 5*time.Second, func() bool { return a.srv.lineMem.used.Load() == 0 })
	c := a.dial(t)
	if err := c.call("ping", map[string]string{"x": strings.Repeat("c", 300<<10)}, nil); rpcKind(err) != kindInvalidParams {
		t.Fatalf("a long line once the budget is back: %v", err)
	}
}

// TestPartialLinesKeepMemoryBounded (issue 11 #7): 300 connections each
// sending 1 MiB without a newline keep the agent (the real binary) under
// 100 MB of resident memory over idle; before, it grew to 570 MB. The
// agent still serves once they are gone.
func TestPartialLinesKeepMemoryBounded(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc to read the agent's resident memory")
	}
	home, clientHome := t.TempDir(), t.TempDir()
	client, err := newIdentity(filepath.Join(clientHome, "tentacle.key"), filepath.Join(clientHome, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	writeTrust(t, home, client.thumbprint+" flood\n")
	p := startProcAgent(t, buildAgent(t), home)
	addr := p.addr
	conf := &tls.Config{Certificates: []tls.Certificate{client.cert}, InsecureSkipVerify: true}
	ping := func() error {
		c, err := dialAgent(addr, client, p.thumbprint, "", 10*time.Second, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.call("ping", nil, nil)
	}
	waitFor(t, "the agent to serve", 20*time.Second, func() bool { return ping() == nil })
	idle := rssKiB(t, p.cmd.Process.Pid)
	const n, chunk = 300, 64 << 10
	var conns []*tls.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	peak := idle
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	head := []byte(`{"id":1,"method":"ping","params":{"x":"`)
	data := bytes.Repeat([]byte("a"), chunk)
	for i := range n {
		c, err := tls.Dial("tcp", addr, conf)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(head); err != nil {
				return
			}
			for sent := len(head); sent < 1<<20; sent += chunk {
				if _, err := c.Write(data); err != nil {
					return // refused and closed by the agent
				}
			}
		}()
		if i%25 == 0 {
			mu.Lock()
			peak = max(peak, rssKiB(t, p.cmd.Process.Pid))
			mu.Unlock()
		}
	}
	wg.Wait()
	peak = max(peak, rssKiB(t, p.cmd.Process.Pid))
	t.Logf("agent resident memory: idle %.1f MiB, peak %.1f MiB with %d connections each sending 1 MiB without a newline", float64(idle)/1024, float64(peak)/1024, n)
	if grew := (peak - idle) / 1024; grew > 100 {
		t.Fatalf("the agent grew by %d MiB (idle %d MiB)", grew, idle/1024)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, "the agent to serve after the flood", 20*time.Second, func() bool { return ping() == nil })
}

// TestStalledReaderCutOff (issue 13 #19): a client that stops reading a
// reply body is cut off after -body-timeout without progress, rather than
// holding its connection (and the agent's shutdown) for ever.
func TestStalledReaderCutOff(t *testing.T) {
	a := startAgent(t, func(c *config) { c.Limits.BodyTimeout = time.Second })
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("z"), 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	c := a.dial(t)
	var res struct {
		Size int64 `json:"size"`
	}
	if _, _, err := c.callDownload("file.download", map[string]string{"path": big}, &res); err != nil || res.Size != 64<<20 {
		t.Fatalf("file.download: %+v, %v", res, err)
	}
	// The client reads nothing more: the agent's writes stall.
	waitFor(t, "the stalled download to be cut off", 15*time.Second, func() bool {
		return strings.Contains(a.logs.String(), "failed to send a body")
	})
	if logs := a.logs.String(); !strings.Contains(logs, "i/o timeout") {
		t.Fatalf("the cut-off does not say it timed out:\n%s", logs)
	}
	start := time.Now()
	a.stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %v after the stalled reader", d)
	}
}
