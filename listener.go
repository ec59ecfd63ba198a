package main

// listener.go: TLS, the accept loop with its handshake limits, and the
// command loop with its framing (PROTOCOL §1, §3, §4).

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
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

// armDeadline sets the read deadline before a read: timeout from now (0:
// none), or by if that is sooner. It refuses the read of an idle
// connection once the agent is shutting down.
func (c *conn) armDeadline(timeout time.Duration, by time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle && c.closing {
		return errShuttingDown
	}
	if timeout > 0 {
		d := time.Now().Add(timeout)
		if !by.IsZero() && by.Before(d) {
			d = by
		}
		c.tc.SetReadDeadline(d)
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
		// The ClientHello is in: the rest of the handshake has the
		// handshake's deadline (handle), no longer the hello's.
		hello.Conn.SetReadDeadline(time.Time{})
		v, _ := s.handshakes.Load(hello.Conn)
		hs, _ := v.(*handshake)
		if hs == nil {
			return nil, errors.New("connection not in a handshake")
		}
		hs.hello = true
		addr := hello.Conn.RemoteAddr()
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				s.noisy.event(slog.LevelWarn, "rejected client", addrIP(addr).Unmap().String(), "no certificate",
					"peer", addr.String(), "reason", "no certificate")
				return errors.New("a client certificate is required")
			}
			tp := thumbprint(cs.PeerCertificates[0])
			list := s.trust.current()
			now := time.Now()
			entry, err := list.lookup(tp, addr, now)
			if err != nil {
				reason, fix := s.rejection(list, tp, addr, now)
				s.noisy.event(slog.LevelWarn, "rejected client", addrIP(addr).Unmap().String(), reason,
					"peer", addr.String(), "thumbprint", tp, "reason", err.Error(), "fix", fix)
				return errors.New("client not trusted")
			}
			hs.verdict = &verdict{entry, list}
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
// kernel's backlog. Each accepted connection is admitted to its handshake
// (listener_admit.go), waits for its turn, or is closed at once.
func (s *server) serve(ln net.Listener) error {
	defer s.noisy.every(cmp.Or(s.cfg.logPeriod, 10*time.Second), s.admit.sweep)()

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
		src := s.cfg.Limits.SourceNetBlock.group(nc.RemoteAddr())
		w, ok, reason := s.admit.admit(src, time.Now())
		if !ok {
			nc.Close()
			<-slots
			s.dropped(nc, src, reason)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-slots }()
			s.handle(nc, src, w)
		}()
	}
}

// dropped logs a connection closed before its handshake.
func (s *server) dropped(nc net.Conn, src netip.Prefix, reason string) {
	s.noisy.event(slog.LevelWarn, "dropped connection", src.String(), reason, "peer", nc.RemoteAddr().String(), "source", src.String(), "reason", reason)
}

// verdict is the trust decision a handshake made, for its connection's
// first request (the decision is made once per trust list, not again).
type verdict struct {
	entry *trustEntry
	list  *trustList
}

// handshake is what one connection's TLS handshake found out, for handle.
// Only the handshake's goroutine touches it.
type handshake struct {
	hello   bool     // the ClientHello arrived
	verdict *verdict // the client is trusted
}

// handle runs one connection: its turn, the handshake, its key's turn,
// then the command loop.
func (s *server) handle(nc net.Conn, src netip.Prefix, w *waiter) {
	lim := &s.cfg.Limits
	if got, refused := await(s.ctx, w, lim.HandshakeTimeout, func(w *waiter) bool { return s.admit.leave(src, w) }); !got {
		nc.Close()
		reason := dropWaited
		if refused {
			reason = dropRefused
		}
		if s.ctx.Err() == nil {
			s.dropped(nc, src, reason)
		}
		return
	}
	start := time.Now()
	bc := &batchConn{Conn: &stallGuard{Conn: nc, timeout: lim.BodyTimeout}} // large reply bodies leave in large writes
	tc := tls.Server(bc, s.tlsConf)
	hs := &handshake{}
	s.handshakes.Store(net.Conn(bc), hs)
	if lim.HelloTimeout > 0 {
		nc.SetReadDeadline(start.Add(lim.HelloTimeout)) // lifted when the ClientHello is in
	}
	ctx, cancel := context.WithTimeout(s.ctx, lim.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	late := errors.Is(ctx.Err(), context.DeadlineExceeded)
	cancel()
	s.handshakes.Delete(net.Conn(bc))
	timedOut := err != nil && (late || !hs.hello && isTimeout(err))
	s.admit.done(src, timedOut, time.Now())
	if err != nil || hs.verdict == nil {
		switch {
		case timedOut && !hs.hello:
			s.timedOut(nc, src, fmt.Sprintf("no ClientHello within %v (-hello-timeout)", lim.HelloTimeout))
		case timedOut:
			s.timedOut(nc, src, fmt.Sprintf("handshake not finished within %v (-handshake-timeout)", lim.HandshakeTimeout))
		default: // trust rejections were logged by the verifier
			s.log.Debug("handshake failed", "peer", nc.RemoteAddr().String(), "err", err)
		}
		tc.Close()
		return
	}
	cs := tc.ConnectionState()
	vd := hs.verdict
	c := &conn{tc: tc, peer: &peer{addr: nc.RemoteAddr(), thumbprint: vd.entry.Thumbprint, entry: vd.entry}, list: vd.list}
	if !s.track(c) {
		tc.Close()
		return
	}
	n, err := s.serveKeyTurn(c)
	s.untrack(c)
	tc.Close()
	// One line per connection, when it ends; its requests have their own.
	s.log.Log(s.ctx, connLevel(c.peer.entry), "connection", "peer", c.peer.addr.String(), "thumbprint", c.peer.thumbprint,
		"name", c.peer.entry.Name, "tls", tls.VersionName(cs.Version), "resumed", cs.DidResume,
		"requests", n, "duration", time.Since(start).Round(time.Millisecond), "end", errString(err))
}

// timedOut logs a handshake that timed out (it counts toward its source's
// penalty).
func (s *server) timedOut(nc net.Conn, src netip.Prefix, reason string) {
	s.noisy.event(slog.LevelWarn, "handshake timed out", src.String(), reason, "peer", nc.RemoteAddr().String(), "source", src.String(), "reason", reason)
}

// serveKeyTurn runs the command loop once the connection's key has a turn
// (-max-conns-per-key). Until then nothing is read: a waiting connection
// is like an idle one. A key already holding its share is answered
// too_large and closed.
func (s *server) serveKeyTurn(c *conn) (int, error) {
	lim := &s.cfg.Limits
	key := c.peer.thumbprint
	w, err := s.keys.take(key, lim.MaxConnsPerKey)
	if err != nil {
		s.refuse(c, errorf(kindTooLarge, "this client's key already has %d connections open or waiting (-max-conns-per-key %d): close some first",
			4*lim.MaxConnsPerKey, lim.MaxConnsPerKey))
		return 0, err
	}
	if got, _ := await(s.ctx, w, lim.IdleTimeout, func(w *waiter) bool { return s.keys.leave(key, w) }); !got {
		if s.ctx.Err() != nil {
			return 0, errShuttingDown
		}
		return 0, errors.New("waited for a turn of its key (-max-conns-per-key) longer than -idle-timeout")
	}
	defer s.keys.give(key)
	return s.commandLoop(c)
}

// refuse answers a connection that will not be served, before reading
// anything, and ends its side of it; handle closes it. The client's request
// may be on its way: it is read and dropped for a moment after the answer,
// so that the close does not reset the connection and lose the answer.
func (s *server) refuse(c *conn, re *rpcError) {
	out := newResponseWriter(c.tc)
	out.write(&response{Error: re})
	if out.flush() == nil && c.tc.CloseWrite() == nil {
		c.tc.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c.tc, 64<<10))
	}
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
	lim := &s.cfg.Limits
	out := newResponseWriter(c.tc)
	dr := &deadlineReader{c: c, flush: out.flush, lineTimeout: lim.LineTimeout}
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
		dr.timeout = lim.IdleTimeout
		dr.beginLine(in.Buffered() > 0)
		line, held, rerr := readLineBudget(in, int(lim.MaxLine), s.lineMem)
		rerr = dr.endLine(rerr)
		c.setIdle(false)
		var refusal *rpcError
		switch {
		case errors.Is(rerr, errLineTooLong):
			refusal = errorf(kindTooLarge, "request line longer than %d bytes", lim.MaxLine)
		case errors.Is(rerr, errLineMemory):
			refusal = errorf(kindTooLarge, "the agent holds as many long request lines as it may (-max-line-memory %d bytes): send this one again later", lim.MaxLineMemory)
		case errors.Is(rerr, errLineLate):
			refusal = errorf(kindTooLarge, "request line not complete %v after its first byte (-line-timeout)", lim.LineTimeout)
		}
		if refusal != nil {
			s.lineMem.give(held)
			out.write(&response{Error: refusal})
			return n, rerr
		}
		if rerr != nil && (rerr != io.EOF || len(line) == 0) {
			s.lineMem.give(held)
			if s.ctx.Err() != nil {
				return n, errShuttingDown
			}
			return n, rerr
		}
		if isBlank(line) {
			s.lineMem.give(held)
			continue
		}
		n++
		done, closeAfter, werr := s.handleRequest(c, line, in, dr, out)
		s.lineMem.give(held)
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

// inFlight is one request on its way through handleRequest.
type inFlight struct {
	c        *conn
	start    time.Time
	req      *request // nil when the line is not a JSON object
	m        method
	known    bool
	call     *call // nil when the line was refused at the envelope
	body     *bodyReader
	bodySize int64
	result   any
	err      error
	close    bool // end the connection after the answer
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
	}
	s.findBody(x, in, dr)
	if x.err == nil {
		s.invoke(x)
	}
	s.settle(x)
	done := requestDone{duration: time.Since(x.start), err: x.err}
	if x.req != nil {
		done.method = x.req.method
	}
	if x.call != nil {
		done.quiet = x.known && !x.m.mutates && !x.m.body && x.call.replyBody == nil
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
		x.err = errorf(kindMethodNotFound, "unknown method %q", clip(x.req.method, maxLogString))
	case !entry.allows(x.m.groups):
		x.err = errorf(kindForbidden, "trust entry %q does not allow %s (allow=%s)", entry.Name, x.req.method, strings.Join(entry.Allow, ","))
	}
}

// findBody finds the body that follows a request line, refused or not, so
// that the stream stays in step: body bytes are never read as requests. A
// known method's params must declare the body if the method takes one. A
// line refused before its method and params are known good (an unknown
// method, as from a newer client; a refused envelope) is taken at its
// word: a "size" its params declare is skipped. A body that cannot be found
// (a size mistyped, or declared twice) closes the connection after the
// answer.
func (s *server) findBody(x *inFlight, in *bufio.Reader, dr *deadlineReader) {
	if x.close || x.req == nil {
		return // revoked: nothing more is read; not an object: it declares nothing
	}
	var size int64
	var err error
	switch {
	case x.known && !x.m.body:
		return
	case x.known:
		size, err = bodySize(x.req.params)
	default:
		size, err = declaredSize(x.req.params)
		for _, p := range x.req.moreParams {
			if n, perr := declaredSize(p); err == nil && (perr != nil || n != size) {
				err = errors.New("params is given twice, declaring different bodies")
			}
		}
		if m, ok := s.methods[x.req.method]; err == nil && size < 0 && ok && m.body {
			err = errors.New(`no "size" could be read from params`)
		}
	}
	if err != nil {
		if x.err == nil {
			x.err = errorf(kindInvalidParams, "%v; the connection is closed because its body cannot be found", err)
		}
		x.close = true
		return
	}
	if size < 0 {
		return
	}
	x.body = &bodyReader{r: io.LimitReader(in, size), dr: dr, timeout: s.cfg.Limits.BodyTimeout}
	x.bodySize = size
	if x.call != nil {
		x.call.body, x.call.bodySize = x.body, size
	}
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
	if b := x.body; b != nil && !x.close {
		switch left := x.bodySize - b.n; {
		case b.err != nil || left > maxDiscard:
			x.close = true // the stream is broken, or too much to skip
		case left > 0:
			if _, err := io.Copy(io.Discard, b); err != nil {
				x.close = true
			}
		}
		if x.close && x.err == nil && x.call.replyBody == nil { // x.err == nil: the method ran
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
