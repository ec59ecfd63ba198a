package main

// client.go: the client side: dialling an agent (pinning, proxies), sending
// requests, and the generic "call" command.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// clientOpts are the flags every client subcommand takes.
type clientOpts struct {
	home    string
	pin     string
	proxy   string
	timeout time.Duration // dial + handshake
	stderr  io.Writer     // where a first use says it made the identity
	// sessions lets reconnects of one command resume TLS sessions; the pin is
	// still checked on every handshake.
	sessions tls.ClientSessionCache
	agent    *agentEntry // the agents file's entry a NAME target chose, dialled by that name
}

// addClientFlags registers -home, -pin and -proxy on fs.
func addClientFlags(fs *flag.FlagSet, stderr io.Writer) *clientOpts {
	o := &clientOpts{timeout: 15 * time.Second, sessions: tls.NewLRUClientSessionCache(4), stderr: stderr}
	fs.StringVar(&o.home, "home", cmp.Or(os.Getenv("TENTACLE_HOME"), defaultHome()), "`dir`ectory with the client's identity (env TENTACLE_HOME)")
	fs.StringVar(&o.pin, "pin", os.Getenv("TENTACLE_PIN"), "the agent's expected `thumbprint` (env TENTACLE_PIN)")
	fs.StringVar(&o.proxy, "proxy", "", "reach the agent through an HTTP CONNECT proxy: http://[user:pass@]HOST:PORT")
	return o
}

// clientCmd is one client command being run, and the prologue every
// client command shares: its flag set with the shared client flags, the
// words after the flags once parsed, the writers run was given, and how it
// dials and reports a failure.
type clientCmd struct {
	name           string
	fs             *flag.FlagSet
	opts           *clientOpts
	args           []string // the words after the flags, once parsed
	stdout, stderr io.Writer
	usageText      string
	fleet          *fleetFlags   // the fan-out flags (fleet_target.go)
	fan            []*agentEntry // a TARGET that selects agents: fan-out mode
}

// newClientCmd starts a client command: its flag set, with the flags every
// client command takes already on it.
func newClientCmd(name, usage string, stdout, stderr io.Writer) *clientCmd {
	fs := newFlagSet(name, usage, stderr)
	return &clientCmd{name: name, fs: fs, opts: addClientFlags(fs, stderr), stdout: stdout, stderr: stderr, usageText: usage}
}

// parse parses args and checks that min to max words follow the flags
// (max < 0: any number). ok false means: exit with code.
func (c *clientCmd) parse(args []string, min, max int) (code int, ok bool) {
	c.addFleetFlags()
	c.args, code, ok = parseFlags(c.fs, args, min, max)
	if ok {
		code, ok = c.resolveTarget()
	}
	return code, ok
}

// dial connects to the agent at target; on failure it prints why and
// returns nil.
func (c *clientCmd) dial(target string) *clientConn {
	return c.opts.dialFor(c.stderr, c.name, target)
}

// fail prints a failed request's error and returns exit code 1.
func (c *clientCmd) fail(err error) int { return clientFailed(c.stderr, c.name, err) }

// usage prints a usage error and returns exit code 2.
func (c *clientCmd) usage(format string, args ...any) int {
	_, code, _ := usageError(c.fs, format, args...)
	return code
}

// follower follows one job of this command on the agent at addr.
func (c *clientCmd) follower(addr string) *follower {
	return &follower{o: c.opts, addr: addr, cmd: c.name, stdout: bufio.NewWriter(c.stdout), stderr: bufio.NewWriter(c.stderr), errw: c.stderr}
}

// agentAddr adds the default port to an address that has none.
func agentAddr(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), defaultPort)
}

// clientConn is an open connection to an agent.
type clientConn struct {
	tc       *tls.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	nextID   int64
	agent    string // the agent's thumbprint
	addr     string // the agent's address, for messages
	self     string // this client's thumbprint, for messages
	answered bool   // an answer has arrived: the agent accepted this client
}

// dial connects to the agent at addr and checks its thumbprint against the
// pin before anything is sent.
func (o *clientOpts) dial(addr string) (*clientConn, error) {
	if o.agent != nil && addr == o.agent.Name {
		addr = o.agent.Addr
	}
	if o.pin == "" {
		return nil, errors.New(`no pin: pass -pin THUMBPRINT (or set TENTACLE_PIN); the agent prints its thumbprint at first start and with "tentacle show-thumbprint"`)
	}
	pin, err := parseThumbprint(o.pin)
	if err != nil {
		return nil, fmt.Errorf("-pin: %v", err)
	}
	id, err := ensureIdentity(&config{Home: o.home}, o.stderr)
	if err != nil {
		return nil, err
	}
	return dialAgent(agentAddr(addr), id, pin, o.proxy, o.timeout, o.sessions)
}

// dialFor dials addr for the client command cmd; on failure it prints why,
// the way every client command does, and returns nil.
func (o *clientOpts) dialFor(stderr io.Writer, cmd, addr string) *clientConn {
	cc, err := o.dial(addr)
	if err != nil {
		fmt.Fprintf(stderr, "tentacle %s: %v\n", cmd, err)
		return nil
	}
	return cc
}

// dialAgent is dial with everything spelled out (tests and health use it).
func dialAgent(addr string, id *identity, pin, proxy string, timeout time.Duration, sessions tls.ClientSessionCache) (*clientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var shown string
	conf := clientTLSConfig(id, sessions)
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the agent sent no certificate")
		}
		shown = thumbprint(cs.PeerCertificates[0])
		if shown != pin {
			return fmt.Errorf("pin mismatch")
		}
		return nil
	}
	var hsErr error // the last attempt's handshake error, explained below
	tc, err := retryDropped(ctx, func() (*tls.Conn, error) {
		nc, err := dialNet(ctx, addr, proxy)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(&batchConn{Conn: nc}, conf) // batchConn: large bodies leave in large writes
		if hsErr = tc.HandshakeContext(ctx); hsErr != nil {
			nc.Close()
			return nil, hsErr
		}
		return tc, nil
	})
	if err != nil && err != hsErr {
		return nil, err
	}
	if err != nil {
		if shown != "" && shown != pin {
			return nil, fmt.Errorf("the agent at %s has thumbprint %s, not the pinned %s: refusing to talk to it", addr, shown, pin)
		}
		if isRefusal(err) {
			return nil, refusedError(addr, id.thumbprint)
		}
		return nil, fmt.Errorf("TLS handshake with %s failed: %v", addr, err)
	}
	return &clientConn{tc: tc, br: bufio.NewReaderSize(tc, 64<<10), bw: bufio.NewWriterSize(tc, 64<<10),
		agent: shown, addr: addr, self: id.thumbprint}, nil
}

// isRefusal reports the TLS alert an agent sends a client it does not
// trust. Under TLS 1.3 it arrives after the client's handshake has
// returned, with the first answer, so receive checks for it too.
func isRefusal(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "bad certificate") || strings.Contains(err.Error(), "certificate required"))
}

// refusedError says what the agent's refusal means and the command that
// ends it. The alert is the same for an unknown key and for a known one
// that from= or expires= keeps out, so the message names both.
func refusedError(addr, self string) error {
	return fmt.Errorf("the agent at %s does not trust this client (thumbprint %s), or its trust entry's from= or expires= keeps this connection out: on the agent, run \"tentacle trust add %s NAME\" (with -home DIR if the agent runs with one), or check that entry's options with \"tentacle trust list\"", addr, self, self)
}

// dialNet opens the TCP connection to addr, directly or through proxy.
func dialNet(ctx context.Context, addr, proxy string) (net.Conn, error) {
	if proxy != "" {
		return dialProxy(ctx, proxy, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// clientTLSConfig is the client's side of PROTOCOL §1, but for the pin
// check, which the caller adds as VerifyConnection.
func clientTLSConfig(id *identity, sessions tls.ClientSessionCache) *tls.Config {
	return &tls.Config{
		Certificates:       []tls.Certificate{id.cert},
		MinVersion:         tls.VersionTLS12,
		CipherSuites:       aeadSuites,
		NextProtos:         []string{"tentacle/1"},
		InsecureSkipVerify: true, // names, chains and dates are not checked: the key is pinned in VerifyConnection
		ClientSessionCache: sessions,
	}
}

// retryDropped makes attempts at a connection until one succeeds, fails
// for a reason a retry does not mend, or ctx ends. A busy agent closes the
// connections it cannot take yet, before or during their handshake, without
// a word (PROTOCOL §3 limits); an honest burst (a CI box starting 200 execs)
// should try again, not fail. The waits double from 50 ms to 1 s, jittered
// so that a burst spreads out.
func retryDropped(ctx context.Context, attempt func() (*tls.Conn, error)) (*tls.Conn, error) {
	wait := 50 * time.Millisecond
	for {
		tc, err := attempt()
		var op *net.OpError
		dropped := errors.Is(err, io.EOF) || errors.As(err, &op) && (op.Op == "read" || op.Op == "write") && !op.Timeout()
		if !dropped {
			return tc, err
		}
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// dialProxy opens a tunnel to addr through an HTTP CONNECT proxy.
func dialProxy(ctx context.Context, proxy, addr string) (net.Conn, error) {
	u, err := url.Parse(proxy)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("-proxy %q: want http://HOST:PORT", proxy)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("failed to reach proxy %q: %v", u.Host, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
		defer nc.SetDeadline(time.Time{})
	}
	req := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n", addr, addr)
	if u.User != nil {
		pass, _ := u.User.Password()
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass)) + "\r\n"
	}
	if _, err := io.WriteString(nc, req+"\r\n"); err != nil {
		nc.Close()
		return nil, err
	}
	// Read the answer a byte at a time: nothing may be read past its blank
	// line, which is where the TLS stream starts.
	var head bytes.Buffer
	b := make([]byte, 1)
	for !bytes.HasSuffix(head.Bytes(), []byte("\r\n\r\n")) && !bytes.HasSuffix(head.Bytes(), []byte("\n\n")) {
		if head.Len() > 16<<10 {
			nc.Close()
			return nil, errors.New("proxy answer too long")
		}
		if _, err := nc.Read(b); err != nil {
			nc.Close()
			return nil, fmt.Errorf("proxy %q: %v", u.Host, err)
		}
		head.WriteByte(b[0])
	}
	status, _, _ := strings.Cut(head.String(), "\n")
	f := strings.Fields(status)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") || f[1] != "200" {
		nc.Close()
		return nil, fmt.Errorf("proxy %q refused CONNECT %s: %s", u.Host, addr, strings.TrimSpace(status))
	}
	return nc, nil
}

func (c *clientConn) Close() error { return c.tc.Close() }

// clientResponse is a decoded answer.
type clientResponse struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *rpcError       `json:"error"`
}

// send writes one request and, if body is not nil, its size bytes.
func (c *clientConn) send(method string, params any, body io.Reader, size int64) error {
	c.nextID++
	req := map[string]any{"jsonrpc": "2.0", "id": c.nextID, "method": method}
	if raw, ok := params.(json.RawMessage); params != nil && (!ok || len(raw) > 0) {
		req["params"] = params
	}
	line, err := json.Marshal(req)
	if err != nil {
		return err
	}
	c.bw.Write(line)
	c.bw.WriteByte('\n')
	if body != nil {
		n, err := io.Copy(c.bw, io.LimitReader(body, size))
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("body ended after %d of %d bytes", n, size)
		}
	}
	return c.bw.Flush()
}

// receive reads one answer and decodes its result into result (unless nil).
// An error answer is returned as *rpcError.
func (c *clientConn) receive(result any) error {
	line, err := readLine(c.br, 64<<20)
	if err != nil {
		switch {
		case !c.answered && isRefusal(err):
			return refusedError(c.addr, c.self)
		case err == io.EOF:
			return errors.New("the agent closed the connection")
		}
		return err
	}
	c.answered = true
	var r clientResponse
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("bad answer from the agent: %v", err)
	}
	if r.Error != nil {
		return r.Error
	}
	if result != nil {
		return json.Unmarshal(r.Result, result)
	}
	return nil
}

// call sends one request and waits for its answer.
func (c *clientConn) call(method string, params, result any) error {
	if err := c.send(method, params, nil, 0); err != nil {
		return err
	}
	return c.receive(result)
}

// callDownload sends a request whose answer carries a body: result is
// decoded, and the body (its declared "size" bytes) can then be read from
// the returned reader before the next call.
func (c *clientConn) callDownload(method string, params, result any) (io.Reader, int64, error) {
	if err := c.send(method, params, nil, 0); err != nil {
		return nil, 0, err
	}
	var raw json.RawMessage
	if err := c.receive(&raw); err != nil {
		return nil, 0, err
	}
	var sz struct {
		Size *int64 `json:"size"`
	}
	if err := json.Unmarshal(raw, &sz); err != nil || sz.Size == nil || *sz.Size < 0 {
		return nil, 0, errors.New("the agent's answer declares no body size")
	}
	if result != nil {
		if err := json.Unmarshal(raw, result); err != nil {
			return nil, 0, err
		}
	}
	return io.LimitReader(c.br, *sz.Size), *sz.Size, nil
}

const usageCall = `
Usage:
  tentacle call [-home DIR] [-pin THUMBPRINT] [-proxy URL] TARGET METHOD [PARAMS-JSON]

Sends one request to the agent at TARGET (port 10933 unless given) and
prints the result as JSON. On an error answer, prints its message and exits 1.

Example:
  tentacle call -pin 5B01…9A agent.example ping
  tentacle call -pin 5B01…9A agent.example job.status '{"ticket":"…"}'
`

func cmdCall(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("call", usageCall, stdout, stderr)
	if code, ok := c.parse(args, 2, 3); !ok {
		return code
	}
	rest := c.args
	var params json.RawMessage
	if len(rest) == 3 {
		params = json.RawMessage(rest[2])
		if !json.Valid(params) {
			fmt.Fprintf(stderr, "tentacle call: PARAMS-JSON %q is not JSON\n", rest[2])
			return 2
		}
	}
	if m, ok := protocolMethods()[rest[1]]; ok && m.body {
		fmt.Fprintf(stderr, "tentacle call: %s carries a body: use tentacle upload, download or push\n", rest[1])
		return 2
	}
	if c.fan != nil {
		return c.fanCall(rest[1], params)
	}
	cc := c.dial(rest[0])
	if cc == nil {
		return 1
	}
	defer cc.Close()
	var result json.RawMessage
	if err := cc.call(rest[1], params, &result); err != nil {
		return c.fail(err)
	}
	var out bytes.Buffer
	json.Indent(&out, result, "", "  ")
	out.WriteByte('\n')
	stdout.Write(out.Bytes())
	return 0
}

// clientFailed prints a failed request's error the way every client command
// does and returns exit code 1.
func clientFailed(stderr io.Writer, cmd string, err error) int {
	var re *rpcError
	if errors.As(err, &re) {
		fmt.Fprintf(stderr, "tentacle %s: %s (%s)\n", cmd, re.Message, re.Kind())
	} else {
		fmt.Fprintf(stderr, "tentacle %s: %v\n", cmd, err)
	}
	return 1
}

// countOf is "1 line" or "N lines": n and the noun, plural but for one.
func countOf(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
