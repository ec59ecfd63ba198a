package main

// trust.go: the agent's identity, thumbprints, and the trust list
// (PROTOCOL §1–2).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Method groups a trust entry may be narrowed to with allow= (PROTOCOL §2).
var methodGroups = []string{"read", "script", "file", "deploy", "jobs"}

const (
	maxTrustLine = 8 << 10  // PROTOCOL §2
	maxTrustFile = 16 << 20 // a trust list is small; never read a huge file into memory
)

// thumbprint is SHA-256 over the leaf certificate's DER SubjectPublicKeyInfo,
// in uppercase hex: pinning the key lets a certificate be renewed on the same
// key without touching any trust list.
func thumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// parseThumbprint accepts any case, ':' separators and a "sha256:" prefix,
// and returns the canonical 64 uppercase hex digits.
func parseThumbprint(s string) (string, error) {
	t := strings.TrimSpace(s)
	if len(t) > 7 && strings.EqualFold(t[:7], "sha256:") {
		t = t[7:]
	}
	t = strings.ReplaceAll(t, ":", "")
	if len(t) != 64 {
		return "", fmt.Errorf("thumbprint %q is not 64 hex digits", s)
	}
	if _, err := hex.DecodeString(t); err != nil {
		return "", fmt.Errorf("thumbprint %q is not hex", s)
	}
	return strings.ToUpper(t), nil
}

// identity is the agent's (or client's) key pair and self-signed certificate.
type identity struct {
	cert       tls.Certificate
	thumbprint string
}

// newIdentity writes a fresh ECDSA P-256 key (0600) and a self-signed
// certificate (0644). P-256 is what every TLS stack, openssl and PowerShell
// included, supports, and its handshakes are the fastest in Go.
func newIdentity(keyPath, certPath string) (*identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tentacle " + host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(100, 0, 0), // dates are not checked; identity is the key
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("failed to write key %q: %v", keyPath, err)
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, fmt.Errorf("failed to write certificate %q: %v", certPath, err)
	}
	return loadIdentity(keyPath, certPath)
}

// loadIdentity reads a key pair, refusing a private key that group or others
// can read, or that lies where others could replace it (StrictModes, see
// trust_modes.go). The key is read from the descriptor that was checked.
func loadIdentity(keyPath, certPath string) (*identity, error) {
	keyPEM, err := readStrict(keyPath, fmt.Sprintf("private key %q", keyPath), true)
	if err != nil {
		if me := (*modeError)(nil); errors.As(err, &me) {
			return nil, err
		}
		return nil, fmt.Errorf("failed to load identity %q, %q: %w", certPath, keyPath, err)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("failed to load identity %q, %q: %w", certPath, keyPath, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("failed to load identity %q, %q: %v", certPath, keyPath, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
		pair.Leaf = leaf
	}
	return &identity{cert: pair, thumbprint: thumbprint(leaf)}, nil
}

// trustEntry is one trusted server: a line of the trust list, a
// TENTACLE_TRUST thumbprint, or the agent's own key.
type trustEntry struct {
	Thumbprint string
	Name       string
	From       []netip.Prefix // empty: any source
	Allow      []string       // groups; "read" is always included
	Files      []string       // files=: the folders file.* may reach; empty: all but the agent's own state
	Expires    time.Time      // zero: never; else the first instant no longer trusted
	self       bool           // the agent's own key: read only, not a "trusted server"
}

// allows reports whether the entry may call a method of one of groups.
func (e *trustEntry) allows(groups []string) bool {
	for _, g := range groups {
		if slices.Contains(e.Allow, g) {
			return true
		}
	}
	return false
}

// admits reports why e does not admit a connection from addr at now, or nil.
func (e *trustEntry) admits(addr netip.Addr, now time.Time) error {
	if !e.Expires.IsZero() && !now.Before(e.Expires) {
		return fmt.Errorf("trust entry %q expired on %s", e.Name, e.Expires.Add(-time.Second).Format(time.DateOnly))
	}
	if len(e.From) > 0 {
		a := addr.Unmap()
		for _, p := range e.From {
			if p.Contains(a) {
				return nil
			}
		}
		return fmt.Errorf("trust entry %q does not admit address %s (from=)", e.Name, a)
	}
	return nil
}

// parseTrustLine parses one non-blank, non-comment line of a trust list.
func parseTrustLine(line string) (*trustEntry, error) {
	if len(line) > maxTrustLine {
		return nil, fmt.Errorf("line longer than %d bytes", maxTrustLine)
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return nil, errors.New("empty entry")
	}
	tp, err := parseThumbprint(fields[0])
	if err != nil {
		return nil, err
	}
	e := &trustEntry{Thumbprint: tp, Allow: methodGroups}
	seen := map[string]bool{}
	i := 1
	for ; i < len(fields); i++ {
		key, val, ok := strings.Cut(fields[i], "=")
		if !ok {
			break // the free name starts here
		}
		if seen[key] {
			return nil, fmt.Errorf("option %q given twice", key)
		}
		seen[key] = true
		switch key {
		case "from":
			e.From = nil
			for c := range strings.SplitSeq(val, ",") {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					a, aerr := netip.ParseAddr(c)
					if aerr != nil {
						return nil, fmt.Errorf("from=%q: %q is not a CIDR", val, c)
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				e.From = append(e.From, p.Masked())
			}
		case "allow":
			e.Allow = []string{"read"}
			for g := range strings.SplitSeq(val, ",") {
				if !slices.Contains(methodGroups, g) {
					return nil, fmt.Errorf("allow=%q: unknown group %q (want %s)", val, g, strings.Join(methodGroups, ","))
				}
				if !slices.Contains(e.Allow, g) {
					e.Allow = append(e.Allow, g)
				}
			}
		case "files":
			for d := range strings.SplitSeq(val, ",") {
				if !filepath.IsAbs(d) {
					return nil, fmt.Errorf("files=%q: %q is not an absolute folder", val, d)
				}
				e.Files = append(e.Files, filepath.Clean(d))
			}
		case "expires":
			d, err := time.Parse(time.DateOnly, val)
			if err != nil {
				return nil, fmt.Errorf("expires=%q is not YYYY-MM-DD", val)
			}
			e.Expires = d.AddDate(0, 0, 1) // trusted until the end of that day, UTC
		default:
			return nil, fmt.Errorf("unknown option %q", key)
		}
	}
	for _, f := range fields[i:] {
		if k, _, ok := strings.Cut(f, "="); ok && isOptionKey(k) {
			return nil, fmt.Errorf("%q after the name looks like an option: options go between the thumbprint and the name", f)
		}
	}
	e.Name = strings.Join(fields[i:], " ")
	return e, nil
}

// isOptionKey reports whether k has the shape of an option's key: a word
// of lowercase letters, digits, '-' and '_', so that "THUMB name allow=read"
// is refused rather than read as a fully trusted "name allow=read".
func isOptionKey(k string) bool {
	if k == "" || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// trustList is one parse of the trust sources. Problems lists malformed
// lines and unusable files, each a message naming file and line.
type trustList struct {
	entries  map[string]*trustEntry // by thumbprint; a later line for the same key wins
	servers  int                    // entries that are not the agent's own key
	problems []string
}

// readTrustFile parses a trust file. A missing file is an empty list; an
// unreadable or unsafe one trusts nobody and is reported.
func readTrustFile(path string, into *trustList) {
	f, err := openStrict(path, fmt.Sprintf("trust list %q", path), false)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if me := (*modeError)(nil); errors.As(err, &me) {
		into.problems = append(into.problems, fmt.Sprintf("%s, so it trusts nobody: fix it with \"%s\"", me.problem, me.fix))
		return
	}
	if err != nil {
		into.problems = append(into.problems, fmt.Sprintf("failed to read trust list %q, so it trusts nobody: %v", path, err))
		return
	}
	defer f.Close()
	parsed, problems, err := parseTrustFile(io.LimitReader(f, maxTrustFile+1), path)
	if err != nil {
		into.problems = append(into.problems, fmt.Sprintf("failed to read trust list %q, so it trusts nobody: %v", path, err))
		return
	}
	into.problems = append(into.problems, problems...)
	for _, e := range parsed {
		into.add(e)
	}
}

// parseTrustFile parses trust lines from r. Malformed lines are reported,
// trust nobody, and do not stop the others (PROTOCOL §2).
func parseTrustFile(r io.Reader, name string) (entries []*trustEntry, problems []string, err error) {
	err = eachLine(r, maxTrustLine, func(n int, line []byte, tooLong bool) error {
		if tooLong {
			problems = append(problems, fmt.Sprintf("%q: malformed trust entry at line %d: longer than %d bytes", name, n, maxTrustLine))
			return nil
		}
		if text := strings.TrimSpace(string(line)); text != "" && text[0] != '#' {
			e, perr := parseTrustLine(text)
			if perr != nil {
				problems = append(problems, fmt.Sprintf("%q: malformed trust entry at line %d: %v", name, n, perr))
			} else {
				entries = append(entries, e)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return entries, problems, nil
}

func (l *trustList) add(e *trustEntry) {
	if l.entries == nil {
		l.entries = map[string]*trustEntry{}
	}
	if old, ok := l.entries[e.Thumbprint]; ok && !old.self {
		l.servers--
	}
	l.entries[e.Thumbprint] = e
	if !e.self {
		l.servers++
	}
}

// parseTrustEnv parses TENTACLE_TRUST: thumbprints separated by commas or
// white space, each trusted for everything.
func parseTrustEnv(v string) (entries []*trustEntry, err error) {
	for f := range strings.FieldsFuncSeq(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' }) {
		tp, err := parseThumbprint(f)
		if err != nil {
			return nil, fmt.Errorf("TENTACLE_TRUST: %v", err)
		}
		entries = append(entries, &trustEntry{Thumbprint: tp, Name: "TENTACLE_TRUST", Allow: methodGroups})
	}
	return entries, nil
}

// fileStamp tells whether a file changed since it was last read. os.Stat
// follows symlinks, so a Kubernetes ConfigMap's symlink swap is seen too.
type fileStamp struct {
	fi  fs.FileInfo
	err error
}

func (a fileStamp) same(b fileStamp) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil && errors.Is(a.err, fs.ErrNotExist) == errors.Is(b.err, fs.ErrNotExist)
	}
	// fileVersion holds size and mtime, and the ctime where there is one
	// (a chown changes it); SameFile and the mode cover the rest elsewhere.
	return os.SameFile(a.fi, b.fi) && a.fi.Mode() == b.fi.Mode() && fileVersion(a.fi) == fileVersion(b.fi)
}

// trustStore is the live trust decision: the file, re-read whenever it
// changes, plus the environment's entries and the agent's own key.
type trustStore struct {
	path   string
	self   *trustEntry   // the agent's own key; a file line for it wins
	env    []*trustEntry // TENTACLE_TRUST; wins over a file line
	logger func(problems []string, servers int)

	mu    sync.Mutex // guards list and stamp; a reload swaps both
	list  *trustList
	stamp fileStamp
}

// newTrustStore reads the trust sources once; onReload is told about every
// (re)load so the agent can log problems.
func newTrustStore(path string, self *trustEntry, env []*trustEntry, onReload func(problems []string, servers int)) *trustStore {
	s := &trustStore{path: path, self: self, env: env, logger: onReload}
	s.current()
	return s
}

// current returns the list as the file is now, re-reading it if its stat
// changed. A stat per call is cheap (about a microsecond) and makes
// revocation take effect on the very next request.
func (s *trustStore) current() *trustList {
	fi, err := os.Stat(s.path)
	st := fileStamp{fi, err}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.list != nil && s.stamp.same(st) {
		return s.list
	}
	l := &trustList{}
	if s.self != nil {
		l.add(s.self)
	}
	readTrustFile(s.path, l)
	for _, e := range s.env {
		l.add(e)
	}
	s.list, s.stamp = l, st
	if s.logger != nil {
		s.logger(l.problems, l.servers)
	}
	return l
}

// lookup returns the entry of l admitting thumbprint tp from addr now.
func (l *trustList) lookup(tp string, addr net.Addr, now time.Time) (*trustEntry, error) {
	e := l.entries[tp]
	if e == nil {
		return nil, fmt.Errorf("thumbprint %s is not trusted", tp)
	}
	if err := e.admits(addrIP(addr), now); err != nil {
		return nil, err
	}
	return e, nil
}

// addrIP is a connection address's IP, or the zero Addr for another kind.
func addrIP(addr net.Addr) netip.Addr {
	var ip netip.Addr
	if ta, ok := addr.(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(ta.IP)
	}
	return ip
}
