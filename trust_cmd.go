package main

// trust_cmd.go: the identity and trust commands: new-certificate,
// show-thumbprint, and trust add/remove/list, which edit the trust file in
// place keeping its comments.

import (
	"bytes"
	"cmp"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const usageTrust = `
Usage:
  tentacle trust add [-home DIR] [-trust-file FILE] [-from CIDRS] [-allow GROUPS] [-files DIRS] [-expires DATE] THUMBPRINT|CERT.pem [NAME...]
  tentacle trust remove [-home DIR] [-trust-file FILE] THUMBPRINT|NAME
  tentacle trust list [-home DIR] [-trust-file FILE]

Edits the trust list <home>/trusted_servers: the servers (clients) whose key
this agent accepts. Changes take effect at once, without a restart; removing
an entry also cuts that server's open connections at their next request.
add takes a thumbprint (64 hex digits, any case, ':' allowed) or a PEM
certificate file; adding a thumbprint that is already there replaces its line.
Comments and other lines are kept as they are. Edits wait for each other
(a lock file beside the trust list), so none is lost. The home must exist
(the agent makes it at its first start), so a mistyped -home is an error
rather than a new, unused trust list.

Example:
  tentacle trust add 3F2A…9C build-server-1
  tentacle trust add -from 10.1.0.0/16 -allow read,deploy -expires 2027-06-30 server.pem release pipeline
  tentacle trust add -allow file -files /srv/app/config,/var/log/app 5B01…9A config pusher
  tentacle trust remove build-server-1
`

func cmdTrust(args []string, stdout, stderr io.Writer) int {
	if code, ok := subcommand("trust", []string{"add", "remove", "list"}, usageTrust, args, stdout, stderr); !ok {
		return code
	}
	sub := args[0]
	fs := newFlagSet("trust "+sub, usageTrust, stderr)
	home := homeFlag(fs)
	trustFile := fs.String("trust-file", os.Getenv("TENTACLE_TRUST_FILE"), "edit this trust list `file` instead of <home>/trusted_servers (env TENTACLE_TRUST_FILE)")
	var from, allow, files, expires *string
	min, max := 0, 0
	switch sub {
	case "add":
		from = fs.String("from", "", "only from these `CIDRs` (comma-separated)")
		allow = fs.String("allow", "", "only these method `groups`: read, script, file, deploy, jobs (comma-separated)")
		files = fs.String("files", "", "file.* only within these absolute `folders` (comma-separated)")
		expires = fs.String("expires", "", "trusted until the end of this `date` (YYYY-MM-DD, UTC)")
		min, max = 1, -1
	case "remove":
		min, max = 1, 1
	}
	rest, code, ok := parseFlags(fs, args[1:], min, max)
	if !ok {
		return code
	}
	cfg := &config{Home: *home, TrustFile: *trustFile}
	path := cfg.trustPath()
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	err := checkTrustDir(cfg, path)
	if err == nil {
		switch sub {
		case "list":
			err = listTrust(cfg, path, stdout, stderr)
		case "add":
			err = editTrust(path, func(lines []string) ([]string, error) {
				return addTrust(lines, path, rest[0], strings.Join(rest[1:], " "), [][2]string{{"from", *from}, {"allow", *allow}, {"files", *files}, {"expires", *expires}}, stderr)
			})
		case "remove":
			err = editTrust(path, func(lines []string) ([]string, error) { return removeTrust(lines, path, rest[0], stderr) })
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "tentacle trust %s: %v\n", sub, err)
		return 1
	}
	return 0
}

// checkTrustDir refuses to work on a trust list whose home (or, with
// -trust-file, folder) does not exist: a mistyped -home would otherwise
// make a new home whose trust list no agent reads.
func checkTrustDir(cfg *config, path string) error {
	if cfg.TrustFile == "" {
		if fi, err := os.Stat(cfg.Home); err != nil || !fi.IsDir() {
			return fmt.Errorf("no agent home %q: pass the agent's -home (or set TENTACLE_HOME); an agent makes its home at its first start (\"tentacle run -home DIR\")", cfg.Home)
		}
		return nil
	}
	if dir := filepath.Dir(path); !dirExists(dir) {
		return fmt.Errorf("no folder %q for the trust list %q: check -trust-file (or TENTACLE_TRUST_FILE)", dir, cfg.TrustFile)
	}
	return nil
}

// trustLockWait is how long an edit waits for another one to finish.
const trustLockWait = 30 * time.Second

// editTrust rewrites the trust list at path with edit, holding the lock
// file beside it (<path>.lock) from the read to the rename, so concurrent
// edits wait for each other and none is lost. Temporary copies a killed
// edit left behind are removed under the same lock.
func editTrust(path string, edit func(lines []string) ([]string, error)) error {
	lock := path + ".lock"
	release, err := lockFile(lock, trustLockWait)
	if err == errLocked {
		return fmt.Errorf("another trust edit has held %q for %v: wait for it to finish", lock, trustLockWait)
	}
	if err != nil {
		return fmt.Errorf("failed to lock the trust list: %v", err)
	}
	defer release()
	dir, tmp := filepath.Dir(path), "."+filepath.Base(path)+".tmp" // writeFileAtomic's temporary names
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmp) && e.Type().IsRegular() {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	data, err := os.ReadFile(path)
	perm := os.FileMode(0o644)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		if fi, err := os.Stat(path); err == nil {
			perm = fi.Mode().Perm() &^ 0o022
		}
	}
	var lines []string
	if text := strings.TrimSuffix(string(data), "\n"); text != "" {
		lines = strings.Split(text, "\n")
	}
	if lines, err = edit(lines); err != nil {
		return err
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return writeFileAtomic(path, b.Bytes(), perm)
}

// lineThumbprint returns the thumbprint a trust line starts with, if any.
func lineThumbprint(line string) string {
	f := strings.Fields(line)
	if len(f) == 0 || strings.HasPrefix(f[0], "#") {
		return ""
	}
	tp, _ := parseThumbprint(f[0])
	return tp
}

// thumbprintArg reads a thumbprint, or a PEM certificate file's.
func thumbprintArg(arg string) (string, error) {
	tp, err := parseThumbprint(arg)
	if err == nil {
		return tp, nil
	}
	data, ferr := os.ReadFile(arg)
	if ferr != nil {
		return "", fmt.Errorf("%q is neither a thumbprint (64 hex digits) nor a readable certificate file", arg)
	}
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return "", fmt.Errorf("%q: %v", arg, err)
			}
			return thumbprint(cert), nil
		}
	}
	return "", fmt.Errorf("%q holds no PEM certificate", arg)
}

// addTrust adds (or replaces) the entry for arg (a thumbprint or a
// certificate file) with opts (option, value) and name.
func addTrust(lines []string, path, arg, name string, opts [][2]string, w io.Writer) ([]string, error) {
	tp, err := thumbprintArg(arg)
	if err != nil {
		return nil, err
	}
	fields := []string{tp}
	for _, o := range opts {
		if o[1] != "" {
			fields = append(fields, o[0]+"="+o[1])
		}
	}
	if strings.ContainsAny(name, "\n\r") {
		return nil, errors.New("the name must be on one line")
	}
	if name != "" {
		fields = append(fields, name)
	}
	line := strings.Join(fields, " ")
	if _, err := parseTrustLine(line); err != nil {
		return nil, err
	}
	verb := "added"
	replaced := false
	for i, l := range lines {
		if lineThumbprint(l) == tp {
			if !replaced {
				lines[i], replaced, verb = line, true, "updated"
			} else {
				lines[i] = "# replaced: " + l
			}
		}
	}
	if !replaced {
		lines = append(lines, line)
	}
	fmt.Fprintf(w, "%s %s in %q\n", verb, line, path)
	return lines, nil
}

// removeTrust removes the entries for arg, a thumbprint or a name.
func removeTrust(lines []string, path, arg string, w io.Writer) ([]string, error) {
	tp, _ := parseThumbprint(arg)
	var kept []string
	removed := 0
	for _, l := range lines {
		e, perr := parseTrustLine(strings.TrimSpace(l))
		if perr == nil && (e.Thumbprint == tp || e.Name == arg) || tp != "" && lineThumbprint(l) == tp {
			removed++
			fmt.Fprintf(w, "removed %s\n", strings.TrimSpace(l))
			continue
		}
		kept = append(kept, l)
	}
	if removed == 0 {
		return nil, fmt.Errorf("no entry with thumbprint or name %q in %q", arg, path)
	}
	return kept, nil
}

func listTrust(cfg *config, path string, stdout, stderr io.Writer) error {
	l := &trustList{}
	readTrustFile(path, l)
	env, err := parseTrustEnv(os.Getenv("TENTACLE_TRUST"))
	if err != nil {
		return err
	}
	for _, e := range env {
		l.add(e)
	}
	for _, p := range l.problems {
		fmt.Fprintln(stderr, p)
	}
	keys := slices.Sorted(maps.Keys(l.entries))
	for _, k := range keys {
		e := l.entries[k]
		var opts []string
		if len(e.From) > 0 {
			var cs []string
			for _, p := range e.From {
				cs = append(cs, p.String())
			}
			opts = append(opts, "from="+strings.Join(cs, ","))
		}
		if len(e.Allow) < len(methodGroups) {
			opts = append(opts, "allow="+strings.Join(e.Allow, ","))
		}
		if len(e.Files) > 0 {
			opts = append(opts, "files="+strings.Join(e.Files, ","))
		}
		if !e.Expires.IsZero() {
			opts = append(opts, "expires="+e.Expires.AddDate(0, 0, -1).Format(time.DateOnly))
		}
		fmt.Fprintf(stdout, "%s  %s  %s\n", e.Thumbprint, strings.Join(opts, " "), e.Name)
	}
	if len(keys) == 0 {
		fmt.Fprintf(stderr, "no trusted servers in %q: add one with \"%s\"\n", path, trustAddCommand(cfg, ""))
	}
	return nil
}

// trustAddCommand is the command that trusts the server with thumbprint tp
// ("": a placeholder) on the agent of cfg, as a user would type it: with
// -home and -trust-file when they are not the defaults, so that it edits
// that agent's list even when run as another user (root's default home is
// /var/lib/tentacle).
func trustAddCommand(cfg *config, tp string) string {
	cmd := "tentacle trust add"
	if cfg.TrustFile != "" {
		cmd += " -trust-file " + shellWord(cfg.TrustFile)
	} else if cfg.Home != defaultHome() {
		cmd += " -home " + shellWord(cfg.Home)
	}
	return cmd + " " + cmp.Or(tp, "THUMBPRINT")
}

// shellWord quotes s for a POSIX shell when it needs it.
func shellWord(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:,=@%", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

const usageNewCertificate = `
Usage:
  tentacle new-certificate [-home DIR] [-force]

Makes the identity: an ECDSA P-256 key (<home>/tentacle.key, 0600) and a
self-signed certificate (<home>/tentacle.crt), and prints the thumbprint.
Refuses to replace an existing identity without -force.

Example:
  tentacle new-certificate -home /var/lib/tentacle
`

func cmdNewCertificate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("new-certificate", usageNewCertificate, stderr)
	home := homeFlag(fs)
	force := fs.Bool("force", false, "replace an existing identity")
	if _, code, ok := parseFlags(fs, args, 0, 0); !ok {
		return code
	}
	cfg := &config{Home: *home}
	if _, err := os.Stat(cfg.keyPath()); err == nil && !*force {
		fmt.Fprintf(stderr, "tentacle new-certificate: identity %q exists: add -force to replace it (every server pinning it must then be told the new thumbprint)\n", cfg.keyPath())
		return 1
	}
	if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
		fmt.Fprintf(stderr, "tentacle new-certificate: %v\n", err)
		return 1
	}
	id, err := newIdentity(cfg.keyPath(), cfg.certPath())
	if err != nil {
		fmt.Fprintf(stderr, "tentacle new-certificate: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "created identity %q\n", cfg.certPath())
	fmt.Fprintln(stdout, id.thumbprint)
	return 0
}

const usageShowThumbprint = `
Usage:
  tentacle show-thumbprint [-home DIR]

Prints the thumbprint of the identity in home, alone on one line: the value a
server pins, or that an agent trusts. Creates the identity if there is none.

Example:
  tentacle show-thumbprint -home /var/lib/tentacle
`

func cmdShowThumbprint(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("show-thumbprint", usageShowThumbprint, stderr)
	home := homeFlag(fs)
	if _, code, ok := parseFlags(fs, args, 0, 0); !ok {
		return code
	}
	id, err := ensureIdentity(&config{Home: *home}, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tentacle show-thumbprint: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, id.thumbprint)
	return 0
}

// ensureIdentity loads the identity in cfg's home, creating home and identity
// when there is none, and says so on w.
func ensureIdentity(cfg *config, w io.Writer) (*identity, error) {
	if _, err := os.Stat(cfg.keyPath()); errors.Is(err, os.ErrNotExist) && cfg.KeyFile == "" {
		if err := os.MkdirAll(cfg.Home, 0o700); err != nil {
			return nil, err
		}
		id, err := newIdentity(cfg.keyPath(), cfg.certPath())
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(w, "created identity %q with thumbprint %s\n", cfg.certPath(), id.thumbprint)
		return id, nil
	}
	return loadIdentity(cfg.keyPath(), cfg.certPath())
}
