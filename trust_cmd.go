package main

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
  tentacle trust add [-home DIR] [-trust-file FILE] [-from CIDRS] [-allow GROUPS] [-expires DATE] THUMBPRINT|CERT.pem [NAME...]
  tentacle trust remove [-home DIR] [-trust-file FILE] THUMBPRINT|NAME
  tentacle trust list [-home DIR] [-trust-file FILE]

Edits the trust list <home>/trusted_servers: the servers (clients) whose key
this agent accepts. Changes take effect at once, without a restart; removing
an entry also cuts that server's open connections at their next request.
add takes a thumbprint (64 hex digits, any case, ':' allowed) or a PEM
certificate file; adding a thumbprint that is already there replaces its line.
Comments and other lines are kept as they are.

Example:
  tentacle trust add 3F2A…9C build-server-1
  tentacle trust add -from 10.1.0.0/16 -allow read,deploy -expires 2027-06-30 server.pem release pipeline
  tentacle trust remove build-server-1
`

func cmdTrust(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "add" && args[0] != "remove" && args[0] != "list") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprint(stdout, strings.TrimLeft(usageTrust, "\n"))
			return 0
		}
		fmt.Fprint(stderr, strings.TrimLeft(usageTrust, "\n"))
		return 2
	}
	sub := args[0]
	fs := newFlagSet("trust "+sub, usageTrust, stderr)
	home := homeFlag(fs)
	trustFile := fs.String("trust-file", os.Getenv("TENTACLE_TRUST_FILE"), "edit this trust list `file` instead of <home>/trusted_servers (env TENTACLE_TRUST_FILE)")
	var from, allow, expires *string
	min, max := 0, 0
	switch sub {
	case "add":
		from = fs.String("from", "", "only from these `CIDRs` (comma-separated)")
		allow = fs.String("allow", "", "only these method `groups`: read, script, file, deploy, jobs (comma-separated)")
		expires = fs.String("expires", "", "trusted until the end of this `date` (YYYY-MM-DD, UTC)")
		min, max = 1, -1
	case "remove":
		min, max = 1, 1
	}
	rest, code, ok := parseFlags(fs, args[1:], min, max)
	if !ok {
		return code
	}
	path := cmp.Or(*trustFile, homeTrustPath(*home))
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var err error
	switch sub {
	case "list":
		err = listTrust(path, stdout, stderr)
	case "add":
		err = addTrust(path, rest[0], strings.Join(rest[1:], " "), *from, *allow, *expires, stderr)
	case "remove":
		err = removeTrust(path, rest[0], stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tentacle trust %s: %v\n", sub, err)
		return 1
	}
	return 0
}

// readTrustLines returns the trust file's lines, as they are (no file: none).
func readTrustLines(path string) ([]string, os.FileMode, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0o644, nil
	}
	if err != nil {
		return nil, 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	text := strings.TrimSuffix(string(data), "\n")
	if text == "" {
		return nil, fi.Mode().Perm() &^ 0o022, nil
	}
	return strings.Split(text, "\n"), fi.Mode().Perm() &^ 0o022, nil
}

// writeTrustLines rewrites the trust file atomically.
func writeTrustLines(path string, lines []string, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
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

func addTrust(path, arg, name, from, allow, expires string, w io.Writer) error {
	tp, err := thumbprintArg(arg)
	if err != nil {
		return err
	}
	fields := []string{tp}
	for _, o := range [][2]string{{"from", from}, {"allow", allow}, {"expires", expires}} {
		if o[1] != "" {
			fields = append(fields, o[0]+"="+o[1])
		}
	}
	if strings.ContainsAny(name, "\n\r") {
		return errors.New("the name must be on one line")
	}
	if name != "" {
		fields = append(fields, name)
	}
	line := strings.Join(fields, " ")
	if _, err := parseTrustLine(line); err != nil {
		return err
	}
	lines, perm, err := readTrustLines(path)
	if err != nil {
		return err
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
	if err := writeTrustLines(path, lines, perm); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s %s in %q\n", verb, line, path)
	return nil
}

func removeTrust(path, arg string, w io.Writer) error {
	lines, perm, err := readTrustLines(path)
	if err != nil {
		return err
	}
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
		return fmt.Errorf("no entry with thumbprint or name %q in %q", arg, path)
	}
	return writeTrustLines(path, kept, perm)
}

func listTrust(path string, stdout, stderr io.Writer) error {
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
		if !e.Expires.IsZero() {
			opts = append(opts, "expires="+e.Expires.AddDate(0, 0, -1).Format(time.DateOnly))
		}
		fmt.Fprintf(stdout, "%s  %s  %s\n", e.Thumbprint, strings.Join(opts, " "), e.Name)
	}
	if len(keys) == 0 {
		fmt.Fprintf(stderr, "no trusted servers in %q: add one with \"tentacle trust add THUMBPRINT\"\n", path)
	}
	return nil
}

// trustAddCommand is the command that trusts a server in home, as a user
// would type it.
func trustAddCommand(home string) string {
	if home == defaultHome() {
		return "tentacle trust add THUMBPRINT"
	}
	return fmt.Sprintf("tentacle trust add -home %s THUMBPRINT", home)
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
