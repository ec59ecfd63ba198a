package main

// listener.go: TLS, the accept loop with its handshake limits, and the
// command loop with its framing (PROTOCOL §1, §3, §4).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// server is the running agent.
type server struct {
	cfg     *config
	log     *slog.Logger
	id      *identity
	trust   *trustStore
	jobs    *jobManager
	pkgs    *packageCache
	apps    *deployManager
	audit   *auditLog
	tlsConf *tls.Config
	started time.Time
	unlock  func()          // releases the home's lock
	ctx     context.Context // cancelled when shutdown begins
	stop    context.CancelFunc

	mu       sync.Mutex // guards conns, startups, closing
	conns    map[*conn]struct{}
	startups map[string]int // handshakes in progress by source address
	closing  bool
	wg       sync.WaitGroup // connection goroutines
}

// conn is one client connection.
type conn struct {
	tc   *tls.Conn
	peer *peer

	done requestDone // the last request, for its log line

	mu   sync.Mutex // guards idle
	idle bool       // waiting for a request: safe to close at shutdown
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
			if _, err := s.trust.lookup(tp, addr, time.Now()); err != nil {
				s.log.Warn("rejected client", "peer", addr.String(), "thumbprint", tp, "reason", err.Error(),
					"fix", "if this client should be trusted: tentacle trust add "+tp)
				return errors.New("client not trusted")
			}
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

// handle runs one connection: handshake, then the command loop.
func (s *server) handle(nc net.Conn, src string) {
	start := time.Now()
	tc := tls.Server(&batchConn{Conn: nc}, s.tlsConf) // batchConn: large reply bodies leave in large writes
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Limits.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	s.endStartup(src)
	if err != nil {
		// Trust rejections were logged by the verifier with the thumbprint.
		s.log.Debug("handshake failed", "peer", nc.RemoteAddr().String(), "err", err)
		tc.Close()
		return
	}
	cs := tc.ConnectionState()
	tp := thumbprint(cs.PeerCertificates[0])
	entry, err := s.trust.lookup(tp, nc.RemoteAddr(), time.Now())
	if err != nil { // revoked between the verifier and here
		tc.Close()
		return
	}
	c := &conn{tc: tc, peer: &peer{addr: nc.RemoteAddr(), thumbprint: tp, entry: entry}}
	if !s.track(c) {
		tc.Close()
		return
	}
	n, err := s.commandLoop(c)
	s.untrack(c)
	tc.Close()
	// One line per connection, when it ends; its requests have their own.
	s.log.Log(s.ctx, connLevel(entry), "connection", "peer", c.peer.addr.String(), "thumbprint", tp, "name", entry.Name,
		"tls", tls.VersionName(cs.Version), "resumed", cs.DidResume,
		"requests", n, "duration", time.Since(start).Round(time.Millisecond), "end", errString(err))
}

func errString(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "closed by client"
	}
	return err.Error()
}

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

// setIdle marks the connection as waiting for a request; it reports false
// when the agent is shutting down and the connection should end.
func (s *server) setIdle(c *conn, idle bool) bool {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	c.mu.Lock()
	c.idle = idle
	c.mu.Unlock()
	return !closing
}

// deadlineReader sets a read deadline before every read, so a stalled peer
// is noticed: timeout is the idle limit between requests and the body limit
// within one.
type deadlineReader struct {
	c       net.Conn
	timeout time.Duration
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.timeout > 0 {
		d.c.SetReadDeadline(time.Now().Add(d.timeout))
	}
	return d.c.Read(p)
}

// errLineTooLong is returned by readLine for a line over its cap whose end
// has not been read; errLineTooLongWhole for one read to its end.
var (
	errLineTooLong      = errors.New("line too long")
	errLineTooLongWhole = fmt.Errorf("%w (read to its end)", errLineTooLong)
)

// readLine reads one line, without "\n" and a "\r" before it, buffering at
// most about max bytes (plus the reader's own buffer): past that it stops
// with errLineTooLong, leaving the rest of the line unread. At EOF a last
// line without "\n" is returned with io.EOF. The line is always a copy.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			if len(line) > max+1 { // not even a trailing "\r" brings it under
				return nil, errLineTooLong
			}
			continue
		}
		if err == nil {
			line = line[:len(line)-1]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > max {
			return nil, errLineTooLongWhole
		}
		return line, err
	}
}

// skipLine consumes the rest of a line.
func skipLine(br *bufio.Reader) error {
	for {
		_, err := br.ReadSlice('\n')
		if err != bufio.ErrBufferFull {
			return err
		}
	}
}

// commandLoop answers requests in order until the connection ends. It
// returns the number of requests and why it ended.
func (s *server) commandLoop(c *conn) (int, error) {
	dr := &deadlineReader{c: c.tc, timeout: s.cfg.Limits.IdleTimeout}
	br := bufio.NewReaderSize(dr, 64<<10)
	bw := bufio.NewWriterSize(c.tc, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	n := 0
	for {
		if !s.setIdle(c, true) {
			return n, errors.New("agent shutting down")
		}
		dr.timeout = s.cfg.Limits.IdleTimeout
		line, err := readLine(br, int(s.cfg.Limits.MaxLine))
		s.setIdle(c, false)
		if errors.Is(err, errLineTooLong) {
			s.writeResponse(bw, enc, &response{ID: nullID, Error: errorf(kindTooLarge, "request line longer than %d bytes", s.cfg.Limits.MaxLine)})
			bw.Flush()
			return n, err
		}
		if err != nil && (err != io.EOF || len(line) == 0) {
			if s.ctx.Err() != nil {
				return n, errors.New("agent shutting down")
			}
			return n, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		n++
		closeAfter, rerr := s.handleRequest(c, line, br, dr, bw, enc)
		if br.Buffered() == 0 || closeAfter || rerr != nil {
			// Pipelined requests already buffered are answered before the
			// flush, saving a write per request.
			if ferr := bw.Flush(); ferr != nil {
				s.logRequest(c)
				return n, ferr
			}
		}
		s.logRequest(c)
		if rerr != nil {
			return n, rerr
		}
		if closeAfter {
			return n, errors.New("closed by agent after an error")
		}
	}
}

func (s *server) writeResponse(bw *bufio.Writer, enc *json.Encoder, r *response) error {
	r.JSONRPC = "2.0"
	if r.ID == nil {
		r.ID = nullID
	}
	return enc.Encode(r) // Encode ends the line with "\n"
}

// handleRequest parses, checks and runs one request, and writes its answer.
// closeAfter asks the loop to close the connection (an unknown or huge body,
// a revoked client); err is a broken connection.
func (s *server) handleRequest(c *conn, line []byte, br *bufio.Reader, dr *deadlineReader, bw *bufio.Writer, enc *json.Encoder) (closeAfter bool, err error) {
	start := time.Now()
	req, perr := parseRequest(line)
	var rid json.RawMessage
	notify := true
	if req != nil {
		rid, notify = req.id, req.id == nil
	}
	reply := func(result any, rerr error) error {
		if notify && (rerr == nil || req != nil) {
			return nil
		}
		r := &response{ID: rid}
		if rerr != nil {
			var re *rpcError
			if !errors.As(rerr, &re) {
				s.log.Error("internal error", "peer", c.peer.addr.String(), "thumbprint", c.peer.thumbprint, "method", req.method, "err", rerr)
				re = errorf(kindInternal, "internal error: %v", rerr)
			}
			r.Error = re
		} else {
			r.Result = result
		}
		return s.writeResponse(bw, enc, r)
	}
	if perr != nil {
		if req == nil || req.method == "" {
			notify = false // an unreadable request always gets its error
		}
		c.done = requestDone{"", time.Since(start), perr}
		return false, reply(nil, perr)
	}
	m, known := methods[req.method]
	cl := &call{ctx: s.ctx, srv: s, peer: c.peer, method: req.method, params: req.params, tc: c.tc}

	// Find the body first, so even a refused request keeps the stream in
	// step. Without a readable size the stream cannot be kept in step: the
	// request is answered (by the most telling error) and the connection
	// closed.
	var sizeErr error
	if known && m.body {
		size, serr := bodySize(req.params)
		if serr != nil {
			sizeErr = errorf(kindInvalidParams, "%v; the connection is closed because its body cannot be found", serr)
			closeAfter = true
		} else {
			cl.bodySize = size
			cl.body = &bodyReader{r: io.LimitReader(br, size), dr: dr, timeout: s.cfg.Limits.BodyTimeout}
		}
	}
	skipBody := func() (bool, error) {
		if cl.body == nil {
			return false, nil
		}
		b := cl.body.(*bodyReader)
		if b.err != nil {
			return true, nil // the stream is broken
		}
		left := cl.bodySize - b.n
		if left == 0 {
			return false, nil
		}
		if left > maxDiscard {
			return true, nil
		}
		if _, err := io.Copy(io.Discard, b); err != nil {
			return true, err
		}
		return false, nil
	}

	var result any
	var herr error
	switch entry, terr := s.trust.lookup(c.peer.thumbprint, c.peer.addr, time.Now()); {
	case terr != nil:
		herr = errorf(kindRevoked, "this client is no longer trusted: %v", terr)
		closeAfter = true
	case !known:
		herr = errorf(kindMethodNotFound, "unknown method %q", req.method)
	case !entry.allows(m.groups):
		c.peer.entry = entry
		herr = errorf(kindForbidden, "trust entry %q does not allow %s (allow=%s)", entry.Name, req.method, strings.Join(entry.Allow, ","))
	case sizeErr != nil:
		c.peer.entry = entry
		herr = sizeErr
	default:
		c.peer.entry = entry
		result, herr = m.fn(cl)
	}
	var stuck bool
	var berr error
	if closeAfter {
		notify = false // the answer says why the connection closes
	} else {
		stuck, berr = skipBody()
		closeAfter = stuck
	}
	if stuck && herr == nil && cl.replyBody == nil {
		herr = errorf(kindTooLarge, "the request's body was not read")
	}
	if known && m.mutates && s.audit != nil {
		s.audit.record(cl, start, herr)
	}
	c.done = requestDone{req.method, time.Since(start), herr}
	if werr := reply(result, herr); werr != nil {
		return true, werr
	}
	if cl.replyBody != nil && herr == nil {
		if werr := cl.replyBody(bw); werr != nil {
			// The promised size can no longer be kept: end the connection.
			s.log.Error("failed to send a body", "peer", c.peer.addr.String(), "method", req.method, "err", werr)
			return true, werr
		}
	}
	return closeAfter, berr
}

// bodySize reads the size a body-carrying request declares.
func bodySize(params json.RawMessage) (int64, error) {
	var p struct {
		Size *int64 `json:"size"`
	}
	if len(params) > 0 {
		var m map[string]json.RawMessage
		json.Unmarshal(params, &m)
		if raw, ok := m["size"]; ok {
			if err := json.Unmarshal(raw, &p.Size); err != nil || p.Size == nil {
				return 0, errors.New(`"size" must be a non-negative integer`)
			}
		}
	}
	if p.Size == nil {
		return 0, errors.New(`missing field "size" in params: this method takes a body of that many bytes`)
	}
	if *p.Size < 0 {
		return 0, errors.New(`"size" must be a non-negative integer`)
	}
	return *p.Size, nil
}

// bodyReader reads a request's body under the body timeout and remembers
// how much was read and whether the stream broke.
type bodyReader struct {
	r       io.Reader
	dr      *deadlineReader
	timeout time.Duration
	n       int64
	err     error // a read error other than the body's end: the stream is broken
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	prev := b.dr.timeout
	b.dr.timeout = b.timeout
	n, err := b.r.Read(p)
	b.dr.timeout = prev
	b.n += int64(n)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// requestDone is what the request log line says of a handled request.
type requestDone struct {
	method   string
	duration time.Duration
	err      error
}

// logRequest writes the one line per request. The loop calls it after the
// answer is sent, so the log write is off the client's round trip.
func (s *server) logRequest(c *conn) {
	method, err := c.done.method, c.done.err
	outcome := "ok"
	if err != nil {
		var re *rpcError
		if errors.As(err, &re) {
			outcome = re.Kind()
		} else {
			outcome = kindInternal
		}
	}
	name := ""
	if c.peer.entry != nil {
		name = c.peer.entry.Name
	}
	s.log.Log(s.ctx, connLevel(c.peer.entry), "request", "peer", c.peer.addr.String(), "thumbprint", c.peer.thumbprint, "name", name,
		"method", method, "duration", c.done.duration.Round(time.Microsecond), "outcome", outcome)
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

// shutdown stops accepting, lets requests in flight finish within ctx, then
// closes what is left.
func (s *server) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	conns := slices.Collect(func(yield func(*conn) bool) {
		for c := range s.conns {
			if !yield(c) {
				return
			}
		}
	})
	s.mu.Unlock()
	s.stop()
	for _, c := range conns {
		c.mu.Lock()
		if c.idle {
			c.tc.SetReadDeadline(time.Now()) // wakes the loop, which sees closing
		}
		c.mu.Unlock()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.tc.Close()
		}
		s.mu.Unlock()
		<-done
	}
}

// runAgent runs the agent until SIGINT or SIGTERM.
func runAgent(cfg *config, logw io.Writer, ready func(*server, net.Addr)) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runAgentContext(ctx, cfg, logw, ready)
}

// runAgentContext runs the agent until ctx is done, then shuts down
// gracefully. ready, if not nil, is called once the agent is listening.
func runAgentContext(ctx context.Context, cfg *config, logw io.Writer, ready func(*server, net.Addr)) error {
	log := newLogger(cfg.LogFormat, logw)
	defer startReaper(log)() // orphans of jobs (reaper_linux.go)
	s, err := newServer(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.close()
		return fmt.Errorf("failed to listen on %q: %v", cfg.Listen, err)
	}
	log.Info("listening", "addr", ln.Addr().String(), "thumbprint", s.id.thumbprint, "home", cfg.Home, "version", versionString())
	if ready != nil {
		ready(s, ln.Addr())
	}
	done := make(chan error, 1)
	go func() { done <- s.serve(ln) }()
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", cfg.ShutdownGrace)
	case err := <-done:
		ln.Close()
		s.close()
		return err
	}
	ln.Close()
	grace, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	s.shutdown(grace)
	<-done
	s.jobs.shutdown(grace)
	s.close()
	log.Info("stopped")
	return nil
}

// newLogger makes the agent's slog logger: text by default, JSON by flag.
func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// newServer prepares the home, identity, trust list and subsystems.
func newServer(cfg *config, log *slog.Logger) (_ *server, err error) {
	if err := prepareHome(cfg.Home); err != nil {
		return nil, err
	}
	unlock, err := lockHome(cfg.Home)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	var id *identity
	if cfg.CertFile != "" {
		id, err = loadIdentity(cfg.KeyFile, cfg.CertFile)
	} else {
		var created bytes.Buffer
		id, err = ensureIdentity(cfg, &created)
		if created.Len() > 0 {
			log.Info("created identity", "cert", cfg.certPath(), "key", cfg.keyPath(), "thumbprint", id.thumbprint)
		}
	}
	if err != nil {
		return nil, err
	}
	env, err := parseTrustEnv(os.Getenv("TENTACLE_TRUST"))
	if err != nil {
		return nil, err
	}
	self := &trustEntry{Thumbprint: id.thumbprint, Name: "self (health probe)", Allow: []string{"read"}, self: true}
	trustPath := cfg.trustPath()
	onReload := func(problems []string, servers int) {
		for _, p := range problems {
			log.Warn("trust list problem", "problem", p)
		}
		if servers == 0 {
			log.Warn("no trusted servers: nobody can connect yet", "fix", "add one with \""+trustAddCommand(cfg.Home)+"\" (or set TENTACLE_TRUST)", "trust_file", trustPath)
		} else {
			log.Info("trust list loaded", "trusted_servers", servers, "trust_file", trustPath)
		}
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &server{
		cfg: cfg, log: log, id: id, started: time.Now(), ctx: sctx, stop: cancel,
		conns: map[*conn]struct{}{}, startups: map[string]int{}, unlock: unlock,
	}
	s.trust = newTrustStore(trustPath, self, env, onReload)
	s.tlsConf = s.serverTLSConfig()
	if s.jobs, err = newJobManager(cfg, log); err != nil {
		return nil, err
	}
	if s.pkgs, err = newPackageCache(cfg, log); err != nil {
		return nil, err
	}
	if s.apps, err = newDeployManager(cfg, log, s.jobs, s.pkgs); err != nil {
		return nil, err
	}
	if s.audit, err = openAuditLog(cfg.auditPath(), cfg.AuditMaxSize); err != nil {
		return nil, err
	}
	return s, nil
}

// close releases what newServer opened.
func (s *server) close() {
	s.stop()
	defer s.unlock()
	if s.audit != nil {
		s.audit.close()
	}
}
