package main

// ops_service.go: "tentacle service install|uninstall", the agent as a systemd
// service. The unit is hardened only where hardening cannot break a deploy;
// the rest is listed in the unit as opt-in lines (see unitText).

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

const (
	serviceName     = "tentacle.service"
	serviceUnitPath = "/etc/systemd/system/" + serviceName
	serviceBinPath  = "/usr/local/bin/tentacle"
	serviceHome     = "/var/lib/tentacle"
	serviceUser     = "tentacle"
)

// serviceSpec is what the unit says.
type serviceSpec struct {
	Bin    string // the binary ExecStart runs
	Home   string
	User   string
	Listen string
}

// serviceHost is where install writes and what it runs: the real system, or
// a temporary folder in tests.
type serviceHost struct {
	unitPath string
	binPath  string // where the binary is installed
	srcBin   string // the binary to install: this executable
	systemd  bool   // systemd is running: reload, enable, start
	out      io.Writer
}

// realServiceHost is the machine itself.
func realServiceHost(out io.Writer) (*serviceHost, error) {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot find this executable to install: %v", err)
	}
	_, err = os.Stat("/run/systemd/system") // how sd_booted(3) tells
	return &serviceHost{unitPath: serviceUnitPath, binPath: serviceBinPath, srcBin: exe, systemd: err == nil, out: out}, nil
}

// systemdQuote quotes one ExecStart word: specifiers (%) and variables ($)
// are escaped, and a word with white space, quotes or backslashes is
// double-quoted (systemd.syntax(7)).
func systemdQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	s = strings.ReplaceAll(s, "$", "$$")
	if s != "" && !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}

// unitText is the systemd unit for spec.
func unitText(spec serviceSpec) string {
	exec := strings.Join([]string{systemdQuote(spec.Bin), "run", "-home", systemdQuote(spec.Home), "-listen", systemdQuote(spec.Listen)}, " ")
	return `# ` + serviceName + `: written by "tentacle service install", removed by
# "tentacle service uninstall". Put local changes in a drop-in
# ("systemctl edit tentacle"): a reinstall rewrites this file.
[Unit]
Description=tentacle listening deployment agent
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=` + spec.User + `
ExecStart=` + exec + `
Restart=on-failure
RestartSec=5s
# SIGTERM lets requests and jobs finish (-shutdown-grace 30s, then jobs are
# killed after -kill-grace 10s); systemd waits a little longer than both.
TimeoutStopSec=60s
# Files the agent and its jobs create are private unless a job or an upload
# says otherwise (file.upload's mode). If other users (a web server) must
# read deployed files, set UMask=0022 in a drop-in.
UMask=0077
# No job can gain privileges through setuid programs (sudo, su, ping). A
# deploy that must restart a system service needs a root agent
# ("tentacle service install -user root") or NoNewPrivileges=no in a drop-in.
NoNewPrivileges=yes
LimitNOFILE=65536
# The service's cgroup is handed to its user, so that the agent may put each
# job in a cgroup of its own below it (process limit, whole-tree kill);
# without it an agent that is not root falls back to process groups.
Delegate=yes
# Off because they break ordinary deploys, which write to /opt, /etc or
# /srv, use /tmp with other services, or live in /home. Turn on in a drop-in
# what your deploys allow:
#   ProtectSystem=full      (strict: also ReadWritePaths=/opt/myapp)
#   ProtectHome=yes
#   PrivateTmp=yes

[Install]
WantedBy=multi-user.target
`
}

// validUserName reports whether s is a portable user name:
// [a-z_][a-z0-9_-]{0,31}.
func validUserName(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] == '-' || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

const usageService = `
Usage:
  tentacle service install [-home DIR] [-user NAME] [-listen ADDR] [-dry-run]
  tentacle service uninstall [-dry-run]

install runs the agent as the systemd service tentacle.service (Linux):
  - creates the user NAME (default tentacle) with "useradd --system" if it
    does not exist;
  - copies this binary to /usr/local/bin/tentacle;
  - creates the home (default /var/lib/tentacle, 0700, owned by NAME) and the
    agent's identity in it, and prints its thumbprint;
  - writes /etc/systemd/system/tentacle.service: Restart=on-failure,
    UMask=0077, NoNewPrivileges=yes, as user NAME;
  - when systemd is running: systemctl daemon-reload, then
    systemctl enable --now tentacle.
Run it again to change the flags. -dry-run prints the unit to stdout and
what would be done to stderr, and changes nothing.

uninstall stops and disables the service and removes the unit. It keeps the
home (identity, trust list, apps: a reinstall picks them up again), the user
and /usr/local/bin/tentacle, and prints how to remove them.

Example:
  sudo tentacle service install
  sudo tentacle service install -user root -listen 10.0.0.5:10933
  tentacle service install -dry-run > tentacle.service
  sudo tentacle service uninstall
`

func cmdService(args []string, stdout, stderr io.Writer) int {
	if code, ok := subcommand("service", []string{"install", "uninstall"}, usageService, args, stdout, stderr); !ok {
		return code
	}
	sub := args[0]
	fs := newFlagSet("service "+sub, usageService, stderr)
	var spec serviceSpec
	if sub == "install" {
		fs.StringVar(&spec.Home, "home", cmp.Or(os.Getenv("TENTACLE_HOME"), serviceHome), "the agent's `dir`ectory (env TENTACLE_HOME)")
		fs.StringVar(&spec.User, "user", serviceUser, "run the agent as this `user`, created if missing")
		fs.StringVar(&spec.Listen, "listen", cmp.Or(os.Getenv("TENTACLE_LISTEN"), defaultListen), "`addr`ess to listen on (env TENTACLE_LISTEN)")
	}
	dry := fs.Bool("dry-run", false, "print what would be done, change nothing")
	if _, code, ok := parseFlags(fs, args[1:], 0, 0); !ok {
		return code
	}
	if runtime.GOOS != "linux" {
		fmt.Fprintf(stderr, "tentacle service: systemd services are only supported on Linux, not %s: run \"tentacle run\" under the system's own service manager\n", runtime.GOOS)
		return 1
	}
	if sub == "install" {
		if err := checkServiceSpec(&spec); err != nil {
			_, code, _ := usageError(fs, "%v", err)
			return code
		}
	}
	h, err := realServiceHost(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tentacle service %s: %v\n", sub, err)
		return 1
	}
	spec.Bin = h.binPath
	if *dry {
		if sub == "install" {
			h.planInstall(spec)
			fmt.Fprint(stdout, unitText(spec))
		} else {
			h.planUninstall()
		}
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintf(stderr, "tentacle service %s: must run as root (it writes %s and runs systemctl): try sudo, or -dry-run to see what it would do\n", sub, h.unitPath)
		return 1
	}
	if sub == "install" {
		err = h.install(spec)
	} else {
		err = h.uninstall()
	}
	if err != nil {
		fmt.Fprintf(stderr, "tentacle service %s: %v\n", sub, err)
		return 1
	}
	return 0
}

// checkServiceSpec validates install's flags and makes home absolute.
func checkServiceSpec(s *serviceSpec) error {
	if !validUserName(s.User) {
		return fmt.Errorf("-user %q is not a valid user name (lowercase letters, digits, _ and -)", s.User)
	}
	if strings.TrimSpace(s.Listen) == "" || strings.ContainsAny(s.Listen, " \t\n\"'\\") {
		return fmt.Errorf("-listen %q is not an address", s.Listen)
	}
	if s.Home == "" || strings.ContainsAny(s.Home, "\n\r") {
		return fmt.Errorf("-home %q is not a folder name", s.Home)
	}
	abs, err := filepath.Abs(s.Home)
	if err != nil {
		return err
	}
	s.Home = abs
	return nil
}

func (h *serviceHost) say(format string, args ...any) {
	fmt.Fprintf(h.out, format+"\n", args...)
}

// planInstall tells what install would do.
func (h *serviceHost) planInstall(spec serviceSpec) {
	if _, err := user.Lookup(spec.User); err != nil {
		h.say("would create system user %q (useradd --system)", spec.User)
	}
	if h.srcBin != h.binPath {
		h.say("would copy %q to %q", h.srcBin, h.binPath)
	}
	h.say("would create home %q (0700, owned by %s) and the agent's identity in it", spec.Home, spec.User)
	h.say("would write %q:", h.unitPath)
	if h.systemd {
		h.say("would run: systemctl daemon-reload; systemctl enable --now %s", serviceName)
	} else {
		h.say("systemd is not running here: would not start the service")
	}
}

func (h *serviceHost) planUninstall() {
	if h.systemd {
		h.say("would run: systemctl disable --now %s", serviceName)
	}
	h.say("would remove %q", h.unitPath)
	if h.systemd {
		h.say("would run: systemctl daemon-reload")
	}
}

// install carries out what planInstall tells, saying each step as it is done.
func (h *serviceHost) install(spec serviceSpec) error {
	u, err := user.Lookup(spec.User)
	if err != nil {
		if err := h.command("useradd", "--system", "--user-group", "--home-dir", spec.Home, "--no-create-home",
			"--shell", "/usr/sbin/nologin", "--comment", "tentacle deployment agent", spec.User); err != nil {
			return fmt.Errorf("failed to create user %q: %v: create it yourself, or pick another with -user", spec.User, err)
		}
		if u, err = user.Lookup(spec.User); err != nil {
			return err
		}
		h.say("created system user %q", spec.User)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	if h.srcBin != h.binPath {
		if err := copyExecutable(h.srcBin, h.binPath); err != nil {
			return err
		}
		h.say("installed %q (copied from %q)", h.binPath, h.srcBin)
	} else {
		h.say("using %q", h.binPath)
	}

	if err := os.MkdirAll(spec.Home, 0o700); err != nil {
		return fmt.Errorf("failed to create home %q: %v", spec.Home, err)
	}
	if err := os.Chmod(spec.Home, 0o700); err != nil { // an existing home too
		return err
	}
	var created bytes.Buffer
	id, err := ensureIdentity(&config{Home: spec.Home}, &created)
	if err != nil {
		return err
	}
	if err := chownTree(spec.Home, uid, gid); err != nil {
		return fmt.Errorf("failed to give home %q to %s: %v", spec.Home, spec.User, err)
	}
	h.say("home %q belongs to %s; agent thumbprint %s", spec.Home, spec.User, id.thumbprint)

	if err := os.MkdirAll(filepath.Dir(h.unitPath), 0o755); err != nil {
		return err
	}
	if err := writeFileAtomic(h.unitPath, []byte(unitText(spec)), 0o644); err != nil {
		return fmt.Errorf("failed to write %q: %v", h.unitPath, err)
	}
	h.say("wrote %q", h.unitPath)

	if h.systemd {
		if err := h.command("systemctl", "daemon-reload"); err != nil {
			return err
		}
		if err := h.command("systemctl", "enable", "--now", serviceName); err != nil {
			return err
		}
		h.say("enabled and started %s: see it with \"systemctl status tentacle\" and \"journalctl -u tentacle\"", serviceName)
	} else {
		h.say("systemd is not running here (no /run/systemd/system): start the agent with \"systemctl enable --now tentacle\" where it is")
	}
	h.say("next: trust a server with \"tentacle trust add -home %s THUMBPRINT NAME\", and give it this thumbprint to pin", spec.Home)
	return nil
}

// uninstall stops the service and removes its unit, keeping data.
func (h *serviceHost) uninstall() error {
	unit, err := os.ReadFile(h.unitPath)
	if errors.Is(err, fs.ErrNotExist) {
		h.say("%q does not exist: the service is not installed", h.unitPath)
		return nil
	}
	if err != nil {
		return err
	}
	home, usr := unitHomeUser(string(unit))
	if h.systemd {
		if err := h.command("systemctl", "disable", "--now", serviceName); err != nil {
			return err
		}
		h.say("stopped and disabled %s", serviceName)
	}
	if err := os.Remove(h.unitPath); err != nil {
		return err
	}
	syncDir(filepath.Dir(h.unitPath))
	h.say("removed %q", h.unitPath)
	if h.systemd {
		if err := h.command("systemctl", "daemon-reload"); err != nil {
			return err
		}
	}
	removal := "rm -r " + home + " " + h.binPath
	if usr != "root" {
		removal += " && userdel " + usr
	}
	h.say("kept the home %q (identity, trust list, apps), the user %q and %q; to remove them too: %s", home, usr, h.binPath, removal)
	return nil
}

// unitHomeUser reads the home and user back from a unit install wrote, for
// uninstall's advice; defaults where it cannot tell.
func unitHomeUser(unit string) (home, usr string) {
	home, usr = serviceHome, serviceUser
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "User="); ok {
			usr = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			f := strings.Fields(v)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "-home" && !strings.HasPrefix(f[i+1], `"`) {
					home = strings.ReplaceAll(strings.ReplaceAll(f[i+1], "%%", "%"), "$$", "$")
				}
			}
		}
	}
	return home, usr
}

// command runs a program, showing its output only when it fails.
func (h *serviceHost) command(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startChild(cmd); err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	if err := waitChild(cmd); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// copyExecutable installs src at dst (0755) atomically, so a running copy
// of the old binary is never overwritten in place.
func copyExecutable(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("failed to read %q: %v", src, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := writeFileAtomic(dst, data, 0o755); err != nil {
		return fmt.Errorf("failed to install %q: %v", dst, err)
	}
	return nil
}

// chownTree gives home and everything in it to uid:gid, so an agent once run
// as root can be run as the service user. Symlinks are changed, not
// followed.
func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}
