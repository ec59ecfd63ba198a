package main

// agent.go: the agent assembled and taken down: the server value, its
// start-up (home, lock, identity, trust, jobs, packages, apps, audit) and
// its graceful shutdown.

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"slices"
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
	methods map[string]method // the protocol's table, plus cfg.extraMethods
	audit   *auditLog
	tlsConf *tls.Config
	started time.Time
	unlock  func()          // releases the home's lock
	ctx     context.Context // cancelled when shutdown begins
	stop    context.CancelFunc

	mu         sync.Mutex // guards conns, closing
	conns      map[*conn]struct{}
	closing    bool
	wg         sync.WaitGroup // connection goroutines
	handshakes sync.Map       // net.Conn in its handshake → *handshake

	// The listener's budgets (listener_admit.go, envelope_frame.go) and its
	// rate-limited log (listener_log.go).
	admit   *admission  // handshakes in progress, by source
	keys    keyTurns    // connections by client key
	lineMem *lineBudget // memory held by long request lines
	noisy   *noisyLog   // rate-limited lines for what strangers cause

	// testHookIdle, when set (by a test, before any connection), runs
	// each time a connection has been marked idle, before it reads.
	testHookIdle func()
}

// shutdown stops accepting, lets requests in flight finish within ctx, then
// closes what is left.
func (s *server) shutdown(ctx context.Context) {
	s.beginShutdown()
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

// beginShutdown marks the agent closing and wakes every idle connection,
// which then ends; busy ones end after their request.
func (s *server) beginShutdown() {
	s.mu.Lock()
	s.closing = true
	conns := slices.Collect(maps.Keys(s.conns))
	s.mu.Unlock()
	s.stop()
	for _, c := range conns {
		c.beginClose()
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
	s, err := newServer(cfg, log)
	if err != nil {
		return err // before the reaper's line: a start-up failure is one line
	}
	defer startReaper(log)() // orphans of jobs (sys_linux.go); newServer starts no process
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
// JSON logs give durations in seconds (a number), not Go's nanoseconds, so
// that a log pipeline reads 0.015 rather than 15000000.
func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{ReplaceAttr: durationSeconds}))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// durationSeconds writes a duration attribute as seconds.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.Float64Value(a.Value.Duration().Seconds())
	}
	return a
}

// newServer prepares the home, identity, trust list and subsystems.
func newServer(cfg *config, log *slog.Logger) (_ *server, err error) {
	if err := prepareHome(cfg.Home); err != nil {
		return nil, err
	}
	if err := checkHome(cfg, log); err != nil {
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
			log.Warn("no trusted servers: nobody can connect yet", "fix", "add one with \""+trustAddCommand(cfg, "")+"\" (or set TENTACLE_TRUST)", "trust_file", trustPath)
		} else {
			log.Info("trust list loaded", "trusted_servers", servers, "trust_file", trustPath)
		}
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &server{
		cfg: cfg, log: log, id: id, started: time.Now(), ctx: sctx, stop: cancel,
		conns: map[*conn]struct{}{}, unlock: unlock,
		admit: newAdmission(&cfg.Limits), lineMem: &lineBudget{max: cfg.Limits.MaxLineMemory}, noisy: &noisyLog{log: log},
	}
	s.methods = protocolMethods()
	for name, m := range cfg.extraMethods {
		if _, dup := s.methods[name]; dup {
			return nil, fmt.Errorf("method %q is already in the protocol's table", name)
		}
		s.methods[name] = m
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
	if s.jobs != nil {
		s.jobs.contain.close() // spare cgroups and their threads
	}
	if s.audit != nil {
		s.audit.close()
	}
}
