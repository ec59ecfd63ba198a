package main

// bench_test.go: the core's speed and size, each beside a baseline measured
// in the same run (a bare crypto/tls echo server with the same kind of key
// and mutual authentication), because this machine is shared and absolute
// times wobble. Run: go test -run '^$' -bench Core -benchtime 1x

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bareEchoServer is the baseline: crypto/tls with the same kind of key and a
// required client certificate, answering each line with a pong line.
func bareEchoServer(b *testing.B) string {
	id := newTestIdentity(b)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{id.cert},
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequireAnyClientCert,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := br.ReadSlice('\n'); err != nil {
						return
					}
					if _, err := io.WriteString(c, `{"jsonrpc":"2.0","id":1,"result":{"pong":true}}`+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// benchDial opens a TLS connection as id (no pin check: the same client code
// for the agent and the baseline).
func benchDial(b *testing.B, addr string, id *identity) *tls.Conn {
	c, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{id.cert}, InsecureSkipVerify: true})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

var pingLine = []byte(`{"id":1,"method":"ping"}` + "\n")

// pingOn does n pings on c and returns the time per ping.
func pingOn(b *testing.B, c *tls.Conn, br *bufio.Reader, n int) time.Duration {
	start := time.Now()
	for range n {
		if _, err := c.Write(pingLine); err != nil {
			b.Fatal(err)
		}
		line, err := br.ReadSlice('\n')
		if err != nil || !strings.Contains(string(line), "pong") {
			b.Fatalf("ping: %q %v", line, err)
		}
	}
	return time.Since(start) / time.Duration(n)
}

// connectPing opens n connections one after another, pinging once on each.
func connectPing(b *testing.B, addr string, id *identity, n int) time.Duration {
	start := time.Now()
	for range n {
		c := benchDial(b, addr, id)
		pingOn(b, c, bufio.NewReader(c), 1)
		c.Close()
	}
	return time.Since(start) / time.Duration(n)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchAgent starts an agent that logs to a file, as a deployed one logs to
// a journal, rather than to memory.
func benchAgent(b *testing.B) *testAgent {
	logf, err := os.Create(filepath.Join(b.TempDir(), "agent.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { logf.Close() })
	return startAgentLogging(b, logf)
}

func BenchmarkCorePing(b *testing.B) {
	a := benchAgent(b)
	bare := bareEchoServer(b)
	ac, bc := benchDial(b, a.addr, a.client), benchDial(b, bare, a.client)
	defer ac.Close()
	defer bc.Close()
	abr, bbr := bufio.NewReader(ac), bufio.NewReader(bc)
	const rounds, per = 15, 2000
	for range b.N {
		var agent, base []time.Duration
		pingOn(b, ac, abr, 200) // warm up
		pingOn(b, bc, bbr, 200)
		for range rounds { // interleaved, so both see the same machine load
			agent = append(agent, pingOn(b, ac, abr, per))
			base = append(base, pingOn(b, bc, bbr, per))
		}
		am, bm := median(agent), median(base)
		b.ReportMetric(float64(am.Nanoseconds())/1e3, "agent-µs/ping")
		b.ReportMetric(float64(bm.Nanoseconds())/1e3, "bare-tls-µs/ping")
		b.ReportMetric(float64(am)/float64(bm), "ratio")
		b.Logf("ping on an open connection: agent %v, bare crypto/tls echo %v, ratio %.2f (target ≤ 1.5), medians of %d rounds of %d", am, bm, float64(am)/float64(bm), rounds, per)
	}
}

func BenchmarkCoreConnect(b *testing.B) {
	a := benchAgent(b)
	bare := bareEchoServer(b)
	const rounds, per = 15, 40
	for range b.N {
		var agent, base []time.Duration
		connectPing(b, a.addr, a.client, 10)
		connectPing(b, bare, a.client, 10)
		for range rounds {
			agent = append(agent, connectPing(b, a.addr, a.client, per))
			base = append(base, connectPing(b, bare, a.client, per))
		}
		am, bm := median(agent), median(base)
		b.ReportMetric(float64(am.Nanoseconds())/1e3, "agent-µs/conn")
		b.ReportMetric(float64(bm.Nanoseconds())/1e3, "bare-tls-µs/conn")
		b.ReportMetric(float64(am)/float64(bm), "ratio")
		b.Logf("new connection + mutual TLS 1.3 handshake + ping: agent %v, bare crypto/tls echo %v, ratio %.2f (target ≤ 1.3), medians of %d rounds of %d", am, bm, float64(am)/float64(bm), rounds, per)
	}
}

// buildAgent builds the real binary once per test binary run.
func buildAgent(tb testing.TB) string {
	tb.Helper()
	out := filepath.Join(tb.TempDir(), "tentacle")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, msg)
	}
	return out
}

// rssKiB reads a process's resident set size.
func rssKiB(tb testing.TB, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

func BenchmarkCoreMemory(b *testing.B) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		b.Skip("needs /proc")
	}
	bin := buildAgent(b)
	home, clientHome := b.TempDir(), b.TempDir()
	client, err := newIdentity(filepath.Join(clientHome, "tentacle.key"), filepath.Join(clientHome, "tentacle.crt"))
	if err != nil {
		b.Fatal(err)
	}
	writeTrust(b, home, client.thumbprint+" bench\n")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	// One key holds all 1000 connections here, past the per-key cap's default.
	cmd := exec.Command(bin, "run", "-home", home, "-listen", addr, "-max-conns-per-key", "1000")
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	var conns []*tls.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{client.cert}, InsecureSkipVerify: true})
		if err == nil {
			pingOn(b, c, bufio.NewReader(c), 1)
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent not ready: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range b.N {
		idle := rssKiB(b, cmd.Process.Pid)
		for range 1000 {
			c := benchDial(b, addr, client)
			pingOn(b, c, bufio.NewReader(c), 1)
			conns = append(conns, c)
		}
		busy := rssKiB(b, cmd.Process.Pid)
		b.ReportMetric(float64(idle)/1024, "idle-MiB")
		b.ReportMetric(float64(busy)/1024, "1000conns-MiB")
		b.Logf("agent resident memory: idle %.1f MiB (target < 15), with 1000 open idle trusted connections %.1f MiB (target < 100)", float64(idle)/1024, float64(busy)/1024)
	}
}
