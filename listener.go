package main

// listener.go: TLS, the accept loop with its handshake limits, and the
// command loop with its framing (PROTOCOL §1, §3, §4).

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// conn is one client connection.
type conn struct {
	tc   *tls.Conn
	peer *peer
	list *trustList // the trust list peer.entry was decided on

	mu      sync.Mutex // guards idle, closing, method and the read deadline
	idle    bool       // waiting for a request with none buffered: safe to end at shutdown
	closing bool       // the agent is shutting down: end when next idle
	method  string     // the request in flight, "" between requests
}

// setIdle marks c as waiting for a request, or as busy with one. Marked
// idle, it reports false when the agent is shutting down: the connection
// should end.
func (c *conn) setIdle(idle bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idle = idle
	return !idle || !c.closing
}

// setMethod records the request in flight ("" when it is done).
func (c *conn) setMethod(m string) {
	c.mu.Lock()
	c.method = m
	c.mu.Unlock()
}

// beginClose tells c the agent is shutting down: an idle connection is
// woken at once (its read deadline is now), a busy one ends when it next
// goes idle. The deadline is set under c.mu, as armDeadline sets it, so a
// shutdown landing between "idle" and the read is never lost.
func (c *conn) beginClose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	if c.idle {
		c.tc.SetReadDeadline(time.Now())
	}
}

// errShuttingDown ends an idle connection when the agent stops.
var errShuttingDown = errors.New("agent shutting down")

// armDeadline sets the read deadline before a read (timeout 0: none), or
// refuses the read of an idle connection once the agent is shutting down.
func (c *conn) armDeadline(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle && c.closing {
		return errShuttingDown
	}
	if timeout > 0 {
		c.tc.SetReadDeadline(time.Now().Add(timeout))
	}
	return nil
}

// serverTLSConfig: TLS 1.2+ with forward-secret AEAD suites only, a client
// certificate required, and the trust decision made in VerifyConnection,
// which (unlike VerifyPeerCertificate) also runs on resumed sessions.
func (s *server) serverTLSConfig() *tls.Config {
	base := &tls.Config{
		Certificates: []tls.Certificate{s.id.cert},
		MinVersion:   tls.VersionTLS12,
		CipherSuites: aeadSuites,
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{"tentacle/1"},
	}
	// GetConfigForClient gives the verifier the connection's address, which
	// from= needs; the ticket keys stay those of base, so resumption works.
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		if !slices.Contains(hello.SupportedProtos, "tentacle/1") {
			// ALPN is offered, not required (PROTOCOL §1): Go's server would
			// refuse a client that offers only other protocols.
			cfg.NextProtos = nil
		}
		addr := hello.Conn.RemoteAddr()
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				s.log.Warn("rejected client", "peer", addr.String(), "reason", "no certificate")
				return errors.New("a client certificate is required")
			}
			tp := thumbprint(cs.PeerCertificates[0])
			list := s.trust.current()
			entry, err := list.lookup(tp, addr, time.Now())
			if err != nil {
				s.log.Warn("rejected client", "peer", addr.String(), "thumbprint", tp, "reason", err.Error(),
					"fix", "if this client should be trusted: tentacle trust add "+tp)
				return errors.New("client not trusted")
			}
			s.verdicts.Store(hello.Conn, verdict{entry, list})
			return nil
		}
		return cfg, nil
	}
	return base
}

// aeadSuites are the TLS 1.2 suites allowed: ECDHE (forward secret) with an
// AEAD. TLS 1.3 suites are all of that kind and are not configurable.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// serve accepts connections until the listener is closed. At most MaxConns
// are open: past that, Accept is not called and new ones wait in the
// kernel's backlog.
func (s *server) serve(ln net.Listener) error {
	slots := make(chan struct{}, s.cfg.Limits.MaxConns)
	var delay time.Duration
	for {
		select {
		case slots <- struct{}{}:
		case <-s.ctx.Done():
			return nil
		}
		nc, err := ln.Accept()
		if err != nil {
			<-slots
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		src := sourceOf(nc.RemoteAddr())
		if !s.beginStartup(src) {
			nc.Close()
			<-slots
			s.log.Warn("dropped connection", "peer", nc.RemoteAddr().String(), "reason", "too many handshakes in progress")
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-slots }()
			s.handle(nc, src)
		}()
	}
}

// sourceOf is the address a connection's handshakes are counted under.
func sourceOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// beginStartup admits a connection into its handshake unless that would
// exceed MaxStartups overall or MaxStartupsPerSource from its address.
func (s *server) beginStartup(src string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0
	for _, n := range s.startups {
		total += n
	}
	if s.closing || total >= s.cfg.Limits.MaxStartups || s.startups[src] >= s.cfg.Limits.MaxStartupsPerSource {
		return false
	}
	s.startups[src]++
	return true
}

func (s *server) endStartup(src string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.startups[src]--; s.startups[src] <= 0 {
		delete(s.startups, src)
	}
}

// verdict is the trust decision a handshake made, for its connection's
// first request (the decision is made once per trust list, not again).
type verdict struct {
	entry *trustEntry
	list  *trustList
}

// handle runs one connection: handshake, then the command loop.
func (s *server) handle(nc net.Conn, src string) {
	start := time.Now()
	bc := &batchConn{Conn: nc} // large reply bodies leave in large writes
	tc := tls.Server(bc, s.tlsConf)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Limits.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	s.endStartup(src)
	v, verified := s.verdicts.LoadAndDelete(net.Conn(bc))
	if err != nil || !verified {
		// Trust rejections were logged by the verifier with the thumbprint.
		s.log.Debug("handshake failed", "peer", nc.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	cs := tc.ConnectionState()
	vd := v.(verdict)
	c := &conn{tc: tc, peer: &peer{addr: nc.RemoteAddr(), thumbprint: vd.entry.Thumbprint, entry: vd.entry}, list: vd.list}
	if !s.track(c) {
		tc.Close()
		return
	}
	n, err := s.commandLoop(c)
	s.untrack(c)
	tc.Close()
	// One line per connection, when it ends; its requests have their own.
	s.log.Log(s.ctx, connLevel(c.peer.entry), "connection", "peer", c.peer.addr.String(), "thumbprint", c.peer.thumbprint,
		"name", c.peer.entry.Name, "tls", tls.VersionName(cs.Version), "resumed", cs.DidResume,
		"requests", n, "duration", time.Since(start).Round(time.Millisecond), "end", errString(err))
}

func errString(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "closed by client"
	}
	return err.Error()
}

// track adds c to the open connections, unless the agent is shutting down.
func (s *server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// commandLoop answers requests in order until the connection ends. It
// returns the number of requests and why it ended. Answers are flushed
// before the loop waits for more input (so one is never held back behind a
// blank line or half a request), but not while a further request is
// already buffered: pipelined requests share a write.
func (s *server) commandLoop(c *conn) (n int, err error) {
	out := newResponseWriter(c.tc)
	dr := &deadlineReader{c: c, flush: out.flush}
	in := bufio.NewReaderSize(dr, 64<<10)
	defer func() {
		if ferr := out.flush(); err == nil || errors.Is(err, io.EOF) {
			err = cmp.Or(ferr, err)
		}
	}()
	for {
		if in.Buffered() == 0 && !c.setIdle(true) {
			return n, errShuttingDown
		}
		if s.testHookIdle != nil {
			s.testHookIdle()
		}
		dr.timeout = s.cfg.Limits.IdleTimeout
		line, rerr := readLine(in, int(s.cfg.Limits.MaxLine))
		c.setIdle(false)
		if errors.Is(rerr, errLineTooLong) {
			out.write(&response{Error: errorf(kindTooLarge, "request line longer than %d bytes", s.cfg.Limits.MaxLine)})
			return n, rerr
		}
		if rerr != nil && (rerr != io.EOF || len(line) == 0) {
			if s.ctx.Err() != nil {
				return n, errShuttingDown
			}
			return n, rerr
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		n++
		done, closeAfter, werr := s.handleRequest(c, line, in, dr, out)
		if werr == nil && in.Buffered() == 0 {
			werr = out.flush()
		}
		s.logRequest(c, done) // after the answer left: off the client's round trip
		switch {
		case werr != nil:
			return n, werr
		case closeAfter:
			return n, errors.New("closed by agent after an error")
		}
	}
}

// responseWriter writes answers, buffered, to a connection.
type responseWriter struct {
	bw  *bufio.Writer
	enc *json.Encoder
}

func newResponseWriter(w io.Writer) *responseWriter {
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &responseWriter{bw: bw, enc: enc}
}

// write buffers one answer; an id of nil is written as null.
func (w *responseWriter) write(r *response) error {
	r.JSONRPC = "2.0"
	if r.ID == nil {
		r.ID = nullID
	}
	return w.enc.Encode(r) // Encode ends the line with "\n"
}

func (w *responseWriter) flush() error { return w.bw.Flush() }

// inFlight is one request on its way through handleRequest.
type inFlight struct {
	c      *conn
	start  time.Time
	req    *request
	m      method
	known  bool
	call   *call
	result any
	err    error
	close  bool // end the connection after the answer
}

// handleRequest answers one request line in six steps: parse the envelope,
// authorize the client for the method, find the body, invoke the method,
// settle (discard what the method left of the body, audit), reply. It
// returns what the request log says of it, whether the connection must
// close after the answer (a body that cannot be found or skipped, a
// revoked client), and a write error (a broken connection).
func (s *server) handleRequest(c *conn, line []byte, in *bufio.Reader, dr *deadlineReader, out *responseWriter) (requestDone, bool, error) {
	x := &inFlight{c: c, start: time.Now()}
	if x.req, x.err = parseRequest(line); x.err == nil {
		x.m, x.known = s.methods[x.req.method]
		x.call = &call{ctx: s.ctx, srv: s, peer: c.peer, method: x.req.method, params: x.req.params, tc: c.tc}
		s.authorize(x)
		s.findBody(x, in, dr)
		if x.err == nil {
			s.invoke(x)
		}
		s.settle(x)
	}
	done := requestDone{duration: time.Since(x.start), err: x.err}
	if x.call != nil {
		done.method = x.req.method
	}
	return done, x.close, s.reply(x, out)
}

// authorize checks that the client is still trusted (a changed trust list
// is looked at again; an unchanged one only for expiry), that the method
// exists and that the client's entry allows it.
func (s *server) authorize(x *inFlight) {
	c := x.c
	list := s.trust.current()
	var entry *trustEntry
	var err error
	if list == c.list {
		entry, err = c.peer.entry, c.peer.entry.admits(addrIP(c.peer.addr), time.Now())
	} else if entry, err = list.lookup(c.peer.thumbprint, c.peer.addr, time.Now()); err == nil {
		c.peer.entry, c.list = entry, list
	}
	switch {
	case err != nil:
		x.err, x.close = errorf(kindRevoked, "this client is no longer trusted: %v", err), true
	case !x.known:
		x.err = errorf(kindMethodNotFound, "unknown method %q", x.req.method)
	case !entry.allows(x.m.groups):
		x.err = errorf(kindForbidden, "trust entry %q does not allow %s (allow=%s)", entry.Name, x.req.method, strings.Join(entry.Allow, ","))
	}
}

// findBody finds a body-carrying method's body, even for a refused request,
// so that the stream stays in step. Without a readable size it cannot be
// found: the request is answered with why, and the connection closed.
func (s *server) findBody(x *inFlight, in *bufio.Reader, dr *deadlineReader) {
	if !x.known || !x.m.body || x.close {
		return
	}
	size, err := bodySize(x.req.params)
	if err != nil {
		if x.err == nil {
			x.err = errorf(kindInvalidParams, "%v; the connection is closed because its body cannot be found", err)
		}
		x.close = true
		return
	}
	x.call.bodySize = size
	x.call.body = &bodyReader{r: io.LimitReader(in, size), dr: dr, timeout: s.cfg.Limits.BodyTimeout}
}

// invoke runs the method. A panic in it is the agent's fault: it is logged
// with its stack and answered as internal, and the agent goes on serving.
func (s *server) invoke(x *inFlight) {
	x.c.setMethod(x.req.method)
	defer x.c.setMethod("")
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("request handler panicked", "peer", x.c.peer.addr.String(), "thumbprint", x.c.peer.thumbprint,
				"method", x.req.method, "panic", r, "stack", string(debug.Stack()))
			x.result, x.call.replyBody = nil, nil
			x.err = errorf(kindInternal, "internal error: the agent failed on this request (its log has the details)")
		}
	}()
	x.result, x.err = x.m.fn(x.call)
}

// settle discards what the method left unread of its body (up to
// maxDiscard; past that, or on a broken stream, the connection closes) and
// writes the audit line of a changing method.
func (s *server) settle(x *inFlight) {
	if b, ok := x.call.body.(*bodyReader); ok && !x.close {
		switch left := x.call.bodySize - b.n; {
		case b.err != nil || left > maxDiscard:
			x.close = true // the stream is broken, or too much to skip
		case left > 0:
			if _, err := io.Copy(io.Discard, b); err != nil {
				x.close = true
			}
		}
		if x.close && x.err == nil && x.call.replyBody == nil {
			x.err = errorf(kindTooLarge, "the request's body was not read")
		}
	}
	if x.known && (x.m.mutates || x.m.audited) && s.audit != nil {
		s.audit.record(x.call, x.start, x.err)
	}
}

// reply writes the answer, and the reply body a method set. A
// notification gets none, unless its line was refused as a request (then
// it is not known to be a notification: PROTOCOL §3 answers every refused
// line) or its connection closes (the answer says why).
func (s *server) reply(x *inFlight, out *responseWriter) error {
	r := &response{}
	if x.req != nil {
		r.ID = x.req.id
	}
	if r.ID == nil && x.call != nil && !x.close {
		return nil
	}
	if x.err != nil {
		var re *rpcError
		if !errors.As(x.err, &re) {
			s.log.Error("internal error", "peer", x.c.peer.addr.String(), "thumbprint", x.c.peer.thumbprint, "method", x.req.method, "err", x.err)
			re = errorf(kindInternal, "internal error: %v", x.err)
		}
		r.Error = re
	} else {
		r.Result = x.result
	}
	if err := out.write(r); err != nil {
		return err
	}
	if x.err == nil && x.call.replyBody != nil {
		if err := x.call.replyBody(out.bw); err != nil {
			// The promised size can no longer be kept: end the connection.
			s.log.Error("failed to send a body", "peer", x.c.peer.addr.String(), "method", x.req.method, "err", err)
			return err
		}
	}
	return nil
}

// requestDone is what the request log line says of a handled request.
type requestDone struct {
	method   string
	duration time.Duration
	err      error
}

// logRequest writes the one line per request.
func (s *server) logRequest(c *conn, d requestDone) {
	outcome := "ok"
	if d.err != nil {
		var re *rpcError
		if errors.As(d.err, &re) {
			outcome = re.Kind()
		} else {
			outcome = kindInternal
		}
	}
	s.log.Log(s.ctx, connLevel(c.peer.entry), "request", "peer", c.peer.addr.String(), "thumbprint", c.peer.thumbprint, "name", c.peer.entry.Name,
		"method", d.method, "duration", d.duration.Round(time.Microsecond), "outcome", outcome)
}

// connLevel is the level of a connection's log lines: the agent's own
// health probe (every few seconds under Docker or Kubernetes) logs at debug,
// so it does not drown the lines that matter.
func connLevel(e *trustEntry) slog.Level {
	if e != nil && e.self {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
