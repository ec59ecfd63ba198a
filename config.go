package main

// config.go: flags, environment and the home folder's layout.
//
// Precedence everywhere: a flag beats its environment variable, which beats
// the default.

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

const (
	defaultPort   = "10933"
	defaultListen = ":" + defaultPort
	// maxDiscard is the largest body the agent reads and throws away to keep a
	// connection in step after refusing its request (PROTOCOL §3).
	maxDiscard = 16 << 20
)

// limits are the protocol's bounds (PROTOCOL §3 table) and the agent's own.
type limits struct {
	MaxLine          int64         `json:"max_line"`
	HandshakeTimeout time.Duration `json:"-"`
	IdleTimeout      time.Duration `json:"-"`
	BodyTimeout      time.Duration `json:"-"`
	MaxConns         int           `json:"max_conns"`
	MaxWait          time.Duration `json:"-"`
	// MaxStartups bounds connections still in their TLS handshake, overall
	// and per source (OpenSSH's MaxStartups, PerSourceMaxStartups and
	// PerSourceNetBlockSize), so idle sockets cannot starve everybody else;
	// the rest of the admission rules are in listener_admit.go.
	MaxStartups          startups      `json:"-"`
	MaxStartupsPerSource int           `json:"max_startups_per_source"`
	SourceNetBlock       netBlock      `json:"-"`
	SourcePenalty        time.Duration `json:"-"`
	SourcePenaltyExempt  prefixes      `json:"-"`
	HelloTimeout         time.Duration `json:"-"`
	// Budgets once trusted: connections per client key, the time a request
	// line may take from its first byte, and the memory all long lines
	// still being received may hold together.
	MaxConnsPerKey int           `json:"max_conns_per_key"`
	LineTimeout    time.Duration `json:"-"`
	MaxLineMemory  int64         `json:"max_line_memory"`
}

// config is everything `tentacle run` needs, after flags and environment.
type config struct {
	Home      string
	Listen    string
	LogFormat string // "text" or "json"
	CertFile  string // optional: identity from mounted files
	KeyFile   string
	TrustFile string // optional: a trust list elsewhere, e.g. a mounted ConfigMap
	Limits    limits

	ShutdownGrace  time.Duration // in-flight requests and jobs on SIGTERM
	KillGrace      time.Duration // SIGTERM → SIGKILL for a job's process group
	JobRetention   time.Duration // finished, never-completed jobs are reaped after this
	DiskReserve    int64         // bytes that uploads must leave free
	ExtractMaxSize int64         // bytes a package may expand to
	ExtractMaxFile int64         // entries a package may hold
	PackageGrace   time.Duration // an undeployed package survives pruning this long
	AuditMaxSize   int64         // audit.log is rotated past this size
	JobMaxLog      int64         // bytes of one job's log on disk; past it output is dropped
	JobMaxProcs    int           // processes (and threads) a job's cgroup may hold; 0: no limit
	JobMaxMemory   int64         // bytes of memory a job's cgroup may use; 0: no limit

	// noCgroups makes the agent contain jobs with process groups only, as
	// where cgroups are unavailable: the tests' option. Never set by a flag.
	noCgroups bool

	// logPeriod is how often rate-limited log lines are summarised (0: 10 s);
	// tests shorten it. Never set by a flag.
	logPeriod time.Duration

	// extraMethods are methods beyond the protocol's table, served as if
	// they were in it: the server's option for tests (see withMethod in
	// main_test.go). Never set by a flag.
	extraMethods map[string]method
}

// defaultHome is /var/lib/tentacle for root (a system service), else
// ~/.tentacle; on Windows %ProgramData%\tentacle for an administrator is not
// detectable cheaply, so the user's profile is used.
func defaultHome() string {
	if runtime.GOOS != "windows" && os.Geteuid() == 0 {
		return "/var/lib/tentacle"
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".tentacle")
	}
	if u, err := user.Current(); err == nil && u.HomeDir != "" {
		return filepath.Join(u.HomeDir, ".tentacle")
	}
	return ".tentacle"
}

// envDuration returns the environment variable as a duration, or def when it
// is unset, empty or not a duration (a bad value is caught by check, which
// sees the flag's default and the variable disagree).
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// homeFlag registers -home with its environment default on fs.
func homeFlag(fs *flag.FlagSet) *string {
	return fs.String("home", cmp.Or(os.Getenv("TENTACLE_HOME"), defaultHome()), "agent `dir`ectory: identity, trust list, jobs, files, packages, apps (env TENTACLE_HOME)")
}

// listenFlag registers -listen with its environment default on fs.
func listenFlag(fs *flag.FlagSet) *string {
	return fs.String("listen", cmp.Or(os.Getenv("TENTACLE_LISTEN"), defaultListen), "`addr`ess to listen on (env TENTACLE_LISTEN)")
}

// runFlags registers every flag of `tentacle run` on fs and returns the
// config they fill in.
func runFlags(fs *flag.FlagSet) *config {
	c := &config{}
	fs.StringVar(&c.Home, "home", cmp.Or(os.Getenv("TENTACLE_HOME"), defaultHome()), "agent `dir`ectory (env TENTACLE_HOME)")
	fs.StringVar(&c.Listen, "listen", cmp.Or(os.Getenv("TENTACLE_LISTEN"), defaultListen), "`addr`ess to listen on (env TENTACLE_LISTEN)")
	fs.StringVar(&c.LogFormat, "log-format", cmp.Or(os.Getenv("TENTACLE_LOG_FORMAT"), "text"), "log `format`: text or json (env TENTACLE_LOG_FORMAT)")
	fs.StringVar(&c.CertFile, "cert", os.Getenv("TENTACLE_CERT_FILE"), "use this certificate PEM `file` instead of <home>/tentacle.crt (env TENTACLE_CERT_FILE)")
	fs.StringVar(&c.KeyFile, "key", os.Getenv("TENTACLE_KEY_FILE"), "use this private key PEM `file` instead of <home>/tentacle.key (env TENTACLE_KEY_FILE)")
	fs.StringVar(&c.TrustFile, "trust-file", os.Getenv("TENTACLE_TRUST_FILE"), "read the trust list from this `file` instead of <home>/trusted_servers, e.g. a mounted ConfigMap (env TENTACLE_TRUST_FILE)")
	fs.Int64Var(&c.Limits.MaxLine, "max-line", 1<<20, "longest request line in `bytes`")
	fs.DurationVar(&c.Limits.HandshakeTimeout, "handshake-timeout", 10*time.Second, "TLS handshake `deadline`")
	fs.DurationVar(&c.Limits.IdleTimeout, "idle-timeout", 10*time.Minute, "close a connection idle this `long`")
	fs.DurationVar(&c.Limits.BodyTimeout, "body-timeout", 60*time.Second, "close a connection whose body stalls this `long`")
	fs.IntVar(&c.Limits.MaxConns, "max-conns", 1024, "open connections at most")
	fs.DurationVar(&c.Limits.MaxWait, "max-wait", 60*time.Second, "longest job.status wait_ms (`duration`)")
	c.Limits.MaxStartups, c.Limits.SourceNetBlock = startups{64, 30, 256}, netBlock{24, 64}
	fs.Var(&c.Limits.MaxStartups, "max-startups", "connections in their TLS handshake, `START:RATE:FULL`: from START on new ones are dropped at random (RATE %, rising to all at FULL); N alone is a hard cap")
	fs.IntVar(&c.Limits.MaxStartupsPerSource, "max-startups-per-source", 8, "connections in their TLS handshake at most from one source; more wait their turn")
	fs.Var(&c.Limits.SourceNetBlock, "source-net-block", "group source addresses by these prefix `V4:V6` lengths (32:128: each address its own source)")
	fs.DurationVar(&c.Limits.SourcePenalty, "source-penalty", 5*time.Second, "penalty `duration` a source earns per handshake that times out; with more than 3 ahead its new connections are refused (0: none)")
	fs.Var(&c.Limits.SourcePenaltyExempt, "source-penalty-exempt", "never penalize sources in these `CIDR[,CIDR]`, such as a NAT that trusted clients share with others")
	fs.DurationVar(&c.Limits.HelloTimeout, "hello-timeout", 3*time.Second, "the TLS ClientHello must arrive within this `long`")
	fs.IntVar(&c.Limits.MaxConnsPerKey, "max-conns-per-key", 64, "connections served at once per client key; 3× as many more wait their turn")
	fs.DurationVar(&c.Limits.LineTimeout, "line-timeout", 30*time.Second, "a request line must arrive within this `long` of its first byte")
	fs.Int64Var(&c.Limits.MaxLineMemory, "max-line-memory", 32<<20, "`bytes` all long request lines still being received may hold")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", envDuration("TENTACLE_SHUTDOWN_GRACE", 30*time.Second), "on SIGTERM, wait this `long` for requests and jobs (env TENTACLE_SHUTDOWN_GRACE)")
	fs.DurationVar(&c.KillGrace, "kill-grace", 10*time.Second, "between SIGTERM and SIGKILL when killing a job (`duration`)")
	fs.DurationVar(&c.JobRetention, "job-retention", 24*time.Hour, "remove finished jobs nobody completed after this `long`")
	fs.Int64Var(&c.DiskReserve, "disk-reserve", 256<<20, "`bytes` an upload must leave free on its disk")
	fs.Int64Var(&c.ExtractMaxSize, "extract-max-size", 8<<30, "`bytes` a package may expand to")
	fs.Int64Var(&c.ExtractMaxFile, "extract-max-files", 200000, "`entries` a package may hold")
	fs.DurationVar(&c.PackageGrace, "package-grace", 24*time.Hour, "keep an undeployed package at least this `long`")
	fs.Int64Var(&c.AuditMaxSize, "audit-max-size", 64<<20, "rotate audit.log past this many `bytes`")
	fs.Int64Var(&c.JobMaxLog, "job-max-log", 256<<20, "keep at most this many `bytes` of one job's output; the rest is dropped")
	fs.IntVar(&c.JobMaxProcs, "job-max-procs", 4096, "processes and threads a job may have at once, `n` or 0 for no limit (its cgroup's pids.max)")
	fs.Int64Var(&c.JobMaxMemory, "job-max-memory", 0, "`bytes` of memory a job may use, or 0 for no limit (its cgroup's memory limit)")
	return c
}

// checkEnvDefaults refuses a bad value in an environment variable that
// stands in for a flag not given (a flag given wins, bad variable or not).
func checkEnvDefaults(fs *flag.FlagSet) error {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "shutdown-grace" })
	if v := os.Getenv("TENTACLE_SHUTDOWN_GRACE"); v != "" && !given {
		if _, err := time.ParseDuration(v); err != nil {
			return fmt.Errorf("TENTACLE_SHUTDOWN_GRACE=%q is not a duration such as 8s", v)
		}
	}
	return nil
}

// check validates a config after parsing; its errors are usage errors.
func (c *config) check() error {
	if c.Home == "" {
		return errors.New("-home must not be empty")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("-log-format must be text or json, not %q", c.LogFormat)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("-cert and -key go together")
	}
	if c.Limits.MaxLine < 1024 || c.Limits.MaxConns < 1 || c.Limits.MaxStartupsPerSource < 1 || c.Limits.MaxConnsPerKey < 1 {
		return errors.New("-max-line must be at least 1024 and -max-conns, -max-startups-per-source, -max-conns-per-key at least 1")
	}
	if c.Limits.MaxLineMemory < c.Limits.MaxLine {
		return errors.New("-max-line-memory must be at least -max-line")
	}
	if c.JobMaxProcs < 0 || c.JobMaxProcs == 1 || c.JobMaxMemory < 0 || (c.JobMaxMemory > 0 && c.JobMaxMemory < 1<<20) {
		return errors.New("-job-max-procs must be 0 (no limit) or at least 2, and -job-max-memory 0 (no limit) or at least 1048576 bytes")
	}
	if strings.TrimSpace(c.Listen) == "" {
		return errors.New("-listen must not be empty")
	}
	abs, err := filepath.Abs(c.Home)
	if err != nil {
		return err
	}
	c.Home = abs
	return nil
}

// The home folder's layout. Every path the agent uses is named here.
func (c *config) keyPath() string {
	if c.KeyFile != "" {
		return c.KeyFile
	}
	return filepath.Join(c.Home, "tentacle.key")
}

func (c *config) certPath() string {
	if c.CertFile != "" {
		return c.CertFile
	}
	return filepath.Join(c.Home, "tentacle.crt")
}

func homeTrustPath(home string) string { return filepath.Join(home, "trusted_servers") }
func (c *config) trustPath() string    { return cmp.Or(c.TrustFile, homeTrustPath(c.Home)) }
func (c *config) workDir() string      { return filepath.Join(c.Home, "work") }
func (c *config) filesDir() string     { return filepath.Join(c.Home, "files") }
func (c *config) packagesDir() string  { return filepath.Join(c.Home, "packages") }
func (c *config) appsDir() string      { return filepath.Join(c.Home, "apps") }
func (c *config) uploadsDir() string   { return filepath.Join(c.Home, "uploads") } // journal of upload temporaries
func (c *config) auditPath() string    { return filepath.Join(c.Home, "audit.log") }

// prepareHome creates the home if need be and checks that this user can
// write in it. A bind-mounted home owned by another uid (the commonest
// container mistake) gets one line naming the uid and the fix, not the
// first of several failures further in.
func prepareHome(home string) error {
	err := os.MkdirAll(home, 0o700)
	if err == nil {
		var f *os.File
		if f, err = os.CreateTemp(home, ".write-check*"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return nil
		}
	}
	uid, gid := os.Geteuid(), os.Getegid()
	switch fi, serr := os.Stat(home); {
	case isReadOnlyFS(err):
		return fmt.Errorf("home %q is on a read-only file system: mount a writable volume there (docker run -v NAME:%s) or choose another -home", home, home)
	case errors.Is(err, fs.ErrPermission) && serr == nil && ownerIs(fi, uid):
		return fmt.Errorf("home %q is not writable by uid %d, its owner (mode %s): fix it with \"chmod u+w %s\" or choose another -home", home, uid, octalMode(fi.Mode()), home)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("home %q is not writable by uid %d (gid %d): give it to that user with \"chown -R %d:%d %s\" (for a bind mount, on the host), run as its owner (docker run --user), or choose another -home", home, uid, gid, uid, gid, home)
	}
	return fmt.Errorf("failed to create home %q: %v", home, err)
}

// ownerIs tells whether uid owns fi (false where owners cannot be told).
func ownerIs(fi os.FileInfo, uid int) bool {
	owner, _, ok := fileOwner(fi)
	return ok && owner == uid
}

// checkHome checks, as StrictModes means it (trust_modes.go), the home and
// every folder above it, and the folders and files the agent keeps in it.
// One of the agent's that group or others can write is repaired (chmod
// go-w) and logged: the home itself was safe, so nobody else could have
// reached into it. One owned by another user is refused, since what that
// user put there cannot be known (a job's script swapped for a FIFO), and so
// is an unsafe folder above the home, which is not the agent's to change.
func checkHome(cfg *config, log *slog.Logger) error {
	if isWindows {
		return nil
	}
	for _, rel := range []string{".", "work", "files", "packages", filepath.Join("packages", "partial"), "uploads", "apps", "audit.log", "agent.lock"} {
		if err := checkKept(filepath.Join(cfg.Home, rel), log); err != nil {
			return err
		}
	}
	return nil
}

// checkKept checks the home, or one of the folders or files the agent
// keeps in it, at path (see checkHome). One the operator moved elsewhere and
// linked is followed: the folders on the way and what it leads to count.
func checkKept(path string, log *slog.Logger) error {
	w := strictWalk(fmt.Sprintf("%q", path))
	defer w.close()
	dir, name, fi, err := w.resolve(string(filepath.Separator), path)
	switch {
	case errors.Is(err, fs.ErrNotExist) || err == nil && fi == nil:
		return nil // made later, as the agent makes it
	case err != nil:
		return err
	case name == "":
		name = "."
	}
	return repairMode(dir.root, name, fi, dir.path(name), log)
}

// repairMode refuses fi (name in root) when another user owns it and takes
// group and others' write permission away when they have it (a group that
// is this user's own aside, see privateGroup).
func repairMode(root *os.Root, name string, fi os.FileInfo, path string, log *slog.Logger) error {
	if err := checkOwner(fi, fmt.Sprintf("%q in the agent's home", path), path); err != nil {
		me := err.(*modeError)
		me.problem += ": what that user put there cannot be trusted"
		me.fix = "chown -R " + strings.TrimPrefix(me.fix, "chown ")
		return me
	}
	if m := fi.Mode(); othersCanWrite(fi) {
		fixed := m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky) &^ 0o022
		if err := root.Chmod(name, fixed); err != nil {
			return &modeError{fmt.Sprintf("%q is writable by group or others (mode %s) and could not be repaired (%v)", path, octalMode(m), err), "chmod go-w " + path}
		}
		log.Warn("repaired a mode: group or others could write here", "path", path, "was", octalMode(m), "now", octalMode(fixed))
	}
	return nil
}

// errLocked is lockFile's answer when another process holds the lock.
var errLocked = errors.New("locked by another process")

// lockHome locks <home>/agent.lock for the agent's life (see lockFile), so
// that a second agent on the same home (which would mark the first one's
// jobs lost and kill them) refuses to start.
func lockHome(home string) (release func(), err error) {
	path := filepath.Join(home, "agent.lock")
	release, err = lockFile(path, 0)
	switch {
	case err == errLocked:
		return nil, fmt.Errorf("another agent is running on home %q (it holds %q): stop it first, or use another -home", home, path)
	case err != nil:
		return nil, fmt.Errorf("failed to open lock %q: %v", path, err)
	}
	return release, nil
}
