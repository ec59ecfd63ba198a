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

	mu       sync.Mutex // guards conns, startups, closing
	conns    map[*conn]struct{}
	startups map[string]int // handshakes in progress by source address
	closing  bool
	wg       sync.WaitGroup // connection goroutines
	verdicts sync.Map       // net.Conn in its handshake → verdict, for handle

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
