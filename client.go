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
	// sessions lets reconnects of one command resume TLS sessions; the pin is
	// still checked on every handshake.
	sessions tls.ClientSessionCache
}

// addClientFlags registers -home, -pin and -proxy on fs.
func addClientFlags(fs *flag.FlagSet) *clientOpts {
	o := &clientOpts{timeout: 15 * time.Second, sessions: tls.NewLRUClientSessionCache(4)}
	fs.StringVar(&o.home, "home", cmp.Or(os.Getenv("TENTACLE_HOME"), defaultHome()), "`dir`ectory with the client's identity (env TENTACLE_HOME)")
	fs.StringVar(&o.pin, "pin", os.Getenv("TENTACLE_PIN"), "the agent's expected `thumbprint` (env TENTACLE_PIN)")
	fs.StringVar(&o.proxy, "proxy", "", "reach the agent through an HTTP CONNECT proxy: http://[user:pass@]HOST:PORT")
	return o
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
	tc     *tls.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	nextID int64
	agent  string // the agent's thumbprint
}

// dial connects to the agent at addr and checks its thumbprint against the
// pin before anything is sent.
func (o *clientOpts) dial(addr string) (*clientConn, error) {
	if o.pin == "" {
		return nil, errors.New(`no pin: pass -pin THUMBPRINT (or set TENTACLE_PIN); the agent prints its thumbprint at first start and with "tentacle show-thumbprint"`)
	}
	pin, err := parseThumbprint(o.pin)
	if err != nil {
		return nil, fmt.Errorf("-pin: %v", err)
	}
	id, err := ensureIdentity(&config{Home: o.home}, os.Stderr)
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
	conf := &tls.Config{
		Certificates:       []tls.Certificate{id.cert},
		MinVersion:         tls.VersionTLS12,
		CipherSuites:       aeadSuites,
		NextProtos:         []string{"tentacle/1"},
		InsecureSkipVerify: true, // names, chains and dates are not checked: the key is pinned below
		ClientSessionCache: sessions,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the agent sent no certificate")
			}
			shown = thumbprint(cs.PeerCertificates[0])
			if shown != pin {
				return fmt.Errorf("pin mismatch")
			}
			return nil
		},
	}
	var hsErr error // the last attempt's handshake error, explained below
	tc, err := retryDropped(ctx, func() (*tls.Conn, error) {
		var nc net.Conn
		var err error
		if proxy != "" {
			nc, err = dialProxy(ctx, proxy, addr)
		} else {
			var d net.Dialer
			nc, err = d.DialContext(ctx, "tcp", addr)
		}
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
		if strings.Contains(err.Error(), "bad certificate") || strings.Contains(err.Error(), "certificate required") {
			return nil, fmt.Errorf("the agent at %s refused this client (%v): trust it there with \"tentacle trust add %s\"", addr, err, id.thumbprint)
		}
		return nil, fmt.Errorf("TLS handshake with %s failed: %v", addr, err)
	}
	return &clientConn{tc: tc, br: bufio.NewReaderSize(tc, 64<<10), bw: bufio.NewWriterSize(tc, 64<<10), agent: shown}, nil
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
		if err == io.EOF {
			return errors.New("the agent closed the connection")
		}
		return err
	}
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
  tentacle call [-home DIR] -pin THUMBPRINT [-proxy URL] ADDR METHOD [PARAMS-JSON]

Sends one request to the agent at ADDR (port 10933 unless given) and prints
the result as JSON. On an error answer, prints its message and exits 1.

Example:
  tentacle call -pin 5B01…9A agent.example ping
  tentacle call -pin 5B01…9A agent.example job.status '{"ticket":"…"}'
`

func cmdCall(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("call", usageCall, stderr)
	o := addClientFlags(fs)
	rest, code, ok := parseFlags(fs, args, 2, 3)
	if !ok {
		return code
	}
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
	cc := o.dialFor(stderr, "call", rest[0])
	if cc == nil {
		return 1
	}
	defer cc.Close()
	var result json.RawMessage
	if err := cc.call(rest[1], params, &result); err != nil {
		return clientFailed(stderr, "call", err)
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
