package main

// trust_test.go: thumbprints, the trust list's lines and files, the trust
// commands, and the identity's file modes; last, in a section of its own,
// trust edits under load and mistakes.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

const tpA = "3F2A00000000000000000000000000000000000000000000000000000000009C"

func TestParseThumbprint(t *testing.T) {
	lower := strings.ToLower(tpA)
	colons := ""
	for i := 0; i < 64; i += 2 {
		if i > 0 {
			colons += ":"
		}
		colons += lower[i : i+2]
	}
	for _, tt := range []struct {
		name, in string
		ok       bool
	}{
		{"upper", tpA, true},
		{"lower", lower, true},
		{"colons", colons, true},
		{"sha256 prefix", "sha256:" + tpA, true},
		{"SHA256 prefix", "SHA256:" + colons, true},
		{"short", tpA[:62], false},
		{"long", tpA + "00", false},
		{"not hex", "ZZ" + tpA[2:], false},
		{"empty", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseThumbprint(tt.in)
			if (err == nil) != tt.ok || (tt.ok && got != tpA) {
				t.Fatalf("parseThumbprint(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
}

func TestParseTrustLine(t *testing.T) {
	for _, tt := range []struct {
		name, line string
		err        string // substring; "" means valid
		check      func(*trustEntry) bool
	}{
		{"bare", tpA, "", func(e *trustEntry) bool {
			return e.Name == "" && strings.Join(e.Allow, ",") == strings.Join(methodGroups, ",")
		}},
		{"others' jobs", tpA + " allow=jobs overseer", "", func(e *trustEntry) bool { return strings.Join(e.Allow, ",") == "read,jobs" }},
		{"name", tpA + "  build server 1", "", func(e *trustEntry) bool { return e.Name == "build server 1" }},
		{"all options", tpA + " from=10.1.0.0/16,::1 allow=deploy,read expires=2027-06-30 release pipeline", "", func(e *trustEntry) bool {
			return len(e.From) == 2 && strings.Join(e.Allow, ",") == "read,deploy" &&
				e.Expires.Equal(time.Date(2027, 7, 1, 0, 0, 0, 0, time.UTC)) && e.Name == "release pipeline"
		}},
		{"bare address in from", tpA + " from=10.0.0.1 x", "", func(e *trustEntry) bool { return e.From[0].Bits() == 32 }},
		{"option after the name", tpA + " build allow=read", `"allow=read" after the name looks like an option`, nil},
		{"option-like word after the name", tpA + " name with a=b inside", `"a=b" after the name looks like an option`, nil},
		{"other words with = in the name", tpA + " pipeline (A=1) 2+2=4", "", func(e *trustEntry) bool { return e.Name == "pipeline (A=1) 2+2=4" && len(e.Allow) == len(methodGroups) }},
		{"files", tpA + " files=/srv/app,/etc/app/ x", "", func(e *trustEntry) bool { return strings.Join(e.Files, ",") == "/srv/app,/etc/app" }},
		{"relative files", tpA + " files=srv x", `"srv" is not an absolute folder`, nil},
		{"empty files", tpA + " files= x", `"" is not an absolute folder`, nil},
		{"unknown option", tpA + " colour=blue x", `unknown option "colour"`, nil},
		{"case-variant option", tpA + " FROM=10.0.0.0/8", `unknown option "FROM"`, nil},
		{"bad cidr", tpA + " from=10.0.0.0/33", "is not a CIDR", nil},
		{"unknown group", tpA + " allow=admin", `unknown group "admin"`, nil},
		{"bad date", tpA + " expires=30/06/2027", "is not YYYY-MM-DD", nil},
		{"repeated option", tpA + " allow=read allow=file", "given twice", nil},
		{"bad thumbprint", "3F2A x", "is not 64 hex digits", nil},
		{"over 8 KiB", tpA + " " + strings.Repeat("n", 8<<10), "longer than", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, err := parseTrustLine(tt.line)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || !tt.check(e) {
				t.Fatalf("entry %+v, %v", e, err)
			}
		})
	}
}

func TestTrustFileProblems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "trusted_servers")
	good := newTestIdentity(t).thumbprint
	content := "# comment\n\n" + tpA + " colour=blue bad one\n" + good + " good one\n" + strings.Repeat("x", 9000) + "\nnot-a-thumbprint\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &trustList{}
	readTrustFile(path, l)
	if l.entries[good] == nil || l.entries[tpA] != nil || l.servers != 1 {
		t.Fatalf("entries %v, servers %d", l.entries, l.servers)
	}
	want := []string{
		`"` + path + `": malformed trust entry at line 3: unknown option "colour"`,
		`"` + path + `": malformed trust entry at line 5: longer than 8192 bytes`,
		`"` + path + `": malformed trust entry at line 6`,
	}
	if len(l.problems) != len(want) {
		t.Fatalf("problems %q", l.problems)
	}
	for i, w := range want {
		if !strings.HasPrefix(l.problems[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, l.problems[i], w)
		}
	}

	t.Run("group-writable file trusts nobody", func(t *testing.T) {
		os.Chmod(path, 0o664)
		l := &trustList{}
		readTrustFile(path, l)
		if len(l.entries) != 0 || len(l.problems) != 1 || !strings.Contains(l.problems[0], "chmod go-w") {
			t.Fatalf("entries %v, problems %q", l.entries, l.problems)
		}
	})
	t.Run("unreadable file trusts nobody", func(t *testing.T) {
		os.Remove(path)
		os.Mkdir(path, 0o755) // a folder where the file should be: reading fails
		l := &trustList{}
		readTrustFile(path, l)
		if len(l.entries) != 0 || len(l.problems) != 1 || !strings.Contains(l.problems[0], "trusts nobody") {
			t.Fatalf("entries %v, problems %q", l.entries, l.problems)
		}
	})
}

func TestTrustEnvAndSelf(t *testing.T) {
	envClient := newTestIdentity(t)
	t.Setenv("TENTACLE_TRUST", "  "+strings.ToLower(envClient.thumbprint)+", "+tpA+"\n")
	a := startAgent(t)
	writeTrust(t, a.home, "")
	if err := pingWorks(a, envClient, nil); err != nil {
		t.Fatalf("TENTACLE_TRUST client: %v", err)
	}
	// The agent's own key may read (health probes) but is not a server.
	self, err := loadIdentity(filepath.Join(a.home, "tentacle.key"), filepath.Join(a.home, "tentacle.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pingWorks(a, self, nil); err != nil {
		t.Fatalf("own key cannot ping: %v", err)
	}
	e := a.srv.trust.current().entries[self.thumbprint]
	if e == nil || !e.self || strings.Join(e.Allow, ",") != "read" {
		t.Fatalf("own entry %+v, want read only", e)
	}
	for name, m := range protocolMethods() {
		if !e.allows(m.groups) {
			continue
		}
		if len(m.groups) != 1 || m.groups[0] != "read" {
			t.Errorf("own key may call %s", name)
		}
	}
	if n := a.srv.trust.current().servers; n != 2 {
		t.Fatalf("trusted servers = %d, want the 2 from TENTACLE_TRUST", n)
	}

	t.Setenv("TENTACLE_TRUST", "nonsense")
	home := t.TempDir()
	_, stderr, code := runCLI("run", "-home", home, "-listen", "127.0.0.1:0")
	if code != 1 || !strings.Contains(stderr, "TENTACLE_TRUST") {
		t.Fatalf("bad TENTACLE_TRUST: code %d, stderr %q", code, stderr)
	}
}

func TestFirstStartAndEmptyTrust(t *testing.T) {
	a := startAgent(t)
	logs := a.logs.String()
	for _, want := range []string{"created identity", "thumbprint=" + a.thumbprint, "msg=listening"} {
		if !strings.Contains(logs, want) {
			t.Errorf("first start log lacks %q:\n%s", want, logs)
		}
	}
	fi, err := os.Stat(filepath.Join(a.home, "tentacle.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, %v", fi.Mode(), err)
	}
	fi, err = os.Stat(filepath.Join(a.home, "tentacle.crt"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("cert mode %v, %v", fi.Mode(), err)
	}

	empty := startAgent(t, func(c *config) { os.Remove(homeTrustPath(c.Home)) })
	if logs := empty.logs.String(); !strings.Contains(logs, "no trusted servers: nobody can connect yet") || !strings.Contains(logs, `tentacle trust add -home `+empty.home+` THUMBPRINT`) {
		t.Fatalf("no warning for an empty trust list:\n%s", logs)
	}
	if pingWorks(empty, empty.client, nil) == nil {
		t.Fatal("a client got in with an empty trust list")
	}
}

func TestReadableKeyRefused(t *testing.T) {
	home := t.TempDir()
	if _, _, code := runCLI("new-certificate", "-home", home); code != 0 {
		t.Fatal("new-certificate failed")
	}
	key := filepath.Join(home, "tentacle.key")
	os.Chmod(key, 0o644)
	_, stderr, code := runCLI("run", "-home", home, "-listen", "127.0.0.1:0")
	if code != 1 || !strings.Contains(stderr, "accessible by group or others") || !strings.Contains(stderr, `chmod 600 `+key) {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
}

func TestTrustCommands(t *testing.T) {
	home := t.TempDir()
	path := homeTrustPath(home)
	peer := newTestIdentity(t)
	// A PEM certificate file from a real identity.
	peerHome := t.TempDir()
	out, _, code := runCLI("show-thumbprint", "-home", peerHome)
	if code != 0 {
		t.Fatal("show-thumbprint failed")
	}
	peerTP := strings.TrimSpace(out)
	if len(peerTP) != 64 || strings.Count(out, "\n") != 1 {
		t.Fatalf("show-thumbprint printed %q", out)
	}
	if err := os.WriteFile(path, []byte("# keep this comment\nsomething odd kept too\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"add thumbprint", []string{"add", "-home", home, peer.thumbprint, "build", "server"}, 0, "", "added " + peer.thumbprint + " build server"},
		{"add certificate file", []string{"add", "-home", home, "-allow", "read,deploy", "-from", "127.0.0.0/8", "-expires", "2999-01-01", filepath.Join(peerHome, "tentacle.crt"), "pipeline"}, 0, "", "added " + peerTP + " from=127.0.0.0/8 allow=read,deploy expires=2999-01-01 pipeline"},
		{"update existing", []string{"add", "-home", home, strings.ToLower(peer.thumbprint), "renamed"}, 0, "", "updated"},
		{"bad option value", []string{"add", "-home", home, "-allow", "root", peer.thumbprint}, 1, "", `unknown group "root"`},
		{"not a thumbprint or file", []string{"add", "-home", home, "nope"}, 1, "", "neither a thumbprint"},
		{"flag after arguments", []string{"add", peer.thumbprint, "-home", home}, 2, "", `flag "-home" after the arguments`},
		{"list", []string{"list", "-home", home}, 0, peer.thumbprint + "    renamed", "malformed trust entry at line 2"},
		{"remove by name", []string{"remove", "-home", home, "pipeline"}, 0, "", "removed " + peerTP},
		{"remove missing", []string{"remove", "-home", home, "pipeline"}, 1, "", "no entry with thumbprint or name"},
		{"remove by thumbprint", []string{"remove", "-home", home, peer.thumbprint}, 0, "", "removed"},
		{"no subcommand", nil, 2, "", "Usage:"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(append([]string{"trust"}, s.args...)...)
			if code != s.code || !strings.Contains(stdout, s.stdout) || !strings.Contains(stderr, s.stderr) {
				t.Fatalf("code %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, s.code, stdout, s.stdout, stderr, s.stderr)
			}
		})
	}
	data, _ := os.ReadFile(path)
	if string(data) != "# keep this comment\nsomething odd kept too\n" {
		t.Fatalf("trust file after add and remove = %q, want the original lines kept", data)
	}
}

func FuzzTrustLine(f *testing.F) {
	f.Add(tpA + " from=10.1.0.0/16 allow=read,deploy expires=2027-06-30 release pipeline")
	f.Add(tpA)
	f.Add("sha256:" + strings.ToLower(tpA) + " allow=")
	f.Add(tpA + " from=::1,10.0.0.1 x")
	f.Fuzz(func(t *testing.T, line string) {
		e, err := parseTrustLine(line)
		if err != nil {
			return
		}
		if len(e.Thumbprint) != 64 || strings.ToUpper(e.Thumbprint) != e.Thumbprint {
			t.Fatalf("thumbprint %q from %q", e.Thumbprint, line)
		}
		if e.Allow[0] != "read" {
			t.Fatalf("read not granted: %v", e.Allow)
		}
		if utf8.ValidString(line) && strings.ContainsAny(e.Name, "\n") {
			t.Fatalf("name spans lines: %q", e.Name)
		}
		// Reading the same line from a file gives the same entry.
		entries, problems, ferr := parseTrustFile(strings.NewReader(line+"\n"), "fuzz")
		if ferr != nil || len(problems) != 0 && !strings.Contains(line, "\n") || len(entries) > 0 && entries[0].Thumbprint != e.Thumbprint {
			if !strings.ContainsAny(line, "\n\r") && strings.TrimSpace(line) != "" && strings.TrimSpace(line)[0] != '#' {
				t.Fatalf("file parse of %q: %v %q %v", line, entries, problems, ferr)
			}
		}
	})
}

func TestSecondAgentOnSameHomeRefused(t *testing.T) {
	a := startAgent(t)
	_, stderr, code := runCLI("run", "-home", a.home, "-listen", "127.0.0.1:0")
	if code != 1 || !strings.Contains(stderr, "another agent is running on home") {
		t.Fatalf("second agent: code %d, stderr %q", code, stderr)
	}
	if err := pingWorks(a, a.client, nil); err != nil {
		t.Fatalf("first agent disturbed: %v", err)
	}
}

// "tentacle trust" edits under load and mistakes: no entry lost to a
// concurrent edit, nothing left by a killed one, no home made by a typo,
// and fix hints that name the home.

// TestTrustAddConcurrent: 20 "trust add" at once keep all 20 entries.
func TestTrustAddConcurrent(t *testing.T) {
	home := t.TempDir()
	const n = 20
	tps := make([]string, n)
	for i := range tps {
		tps[i] = fmt.Sprintf("%064X", i+1)
	}
	var wg sync.WaitGroup
	errs := make([]string, n)
	for i, tp := range tps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, stderr, code := runCLI("trust", "add", "-home", home, tp, fmt.Sprintf("server-%d", i)); code != 0 {
				errs[i] = stderr
			}
		}()
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Errorf("add %d: %s", i, e)
		}
	}
	l := &trustList{}
	readTrustFile(homeTrustPath(home), l)
	if len(l.entries) != n || len(l.problems) != 0 {
		t.Fatalf("%d entries of %d after concurrent adds, problems %q", len(l.entries), n, l.problems)
	}
	if left, _ := filepath.Glob(filepath.Join(home, ".trusted_servers.tmp*")); len(left) > 0 {
		t.Fatalf("temporary copies left: %v", left)
	}
}

// TestTrustEditCleansUp: a temporary copy a killed edit left beside the
// trust list is removed by the next edit; the lock file stays harmless.
func TestTrustEditCleansUp(t *testing.T) {
	home := t.TempDir()
	stale := filepath.Join(home, ".trusted_servers.tmp123456")
	writeFile(t, stale, []byte("half a trust list"))
	other := filepath.Join(home, ".unrelated.tmp1")
	writeFile(t, other, []byte("not ours"))
	if _, stderr, code := runCLI("trust", "add", "-home", home, tpA, "x"); code != 0 {
		t.Fatal(stderr)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the stale copy is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("an unrelated file was removed: %v", err)
	}
	if stdout, stderr, code := runCLI("trust", "list", "-home", home); code != 0 || !strings.Contains(stdout, tpA) {
		t.Fatalf("list: %d %q %q", code, stdout, stderr)
	}
}

// TestTrustCommandHomes: a mistyped -home is an error, not a new home, and
// the hints name the home they are about.
func TestTrustCommandHomes(t *testing.T) {
	home := t.TempDir()
	typo := filepath.Join(home, "nope")
	for _, sub := range [][]string{{"add", "-home", typo, tpA}, {"remove", "-home", typo, tpA}, {"list", "-home", typo}} {
		_, stderr, code := runCLI(append([]string{"trust"}, sub...)...)
		if code != 1 || !strings.Contains(stderr, fmt.Sprintf("no agent home %q", typo)) {
			t.Errorf("trust %s: code %d, stderr %q", sub[0], code, stderr)
		}
	}
	if _, err := os.Stat(typo); !os.IsNotExist(err) {
		t.Fatalf("a mistyped home was made: %v", err)
	}
	missing := filepath.Join(home, "no-such-folder", "trusted_servers")
	if _, stderr, code := runCLI("trust", "add", "-trust-file", missing, tpA); code != 1 || !strings.Contains(stderr, "check -trust-file") {
		t.Fatalf("missing -trust-file folder: code %d, stderr %q", code, stderr)
	}

	_, stderr, _ := runCLI("trust", "list", "-home", home)
	if want := fmt.Sprintf("tentacle trust add -home %s THUMBPRINT", home); !strings.Contains(stderr, want) {
		t.Fatalf("list of an empty home says %q, want the hint %q", stderr, want)
	}
	for _, tt := range []struct {
		name string
		cfg  *config
		want string
	}{
		{"default home", &config{Home: defaultHome()}, "tentacle trust add " + tpA},
		{"another home", &config{Home: "/srv/agent"}, "tentacle trust add -home /srv/agent " + tpA},
		{"a home with a space", &config{Home: "/srv/my agent"}, "tentacle trust add -home '/srv/my agent' " + tpA},
		{"a trust file", &config{Home: "/srv/agent", TrustFile: "/etc/tentacle/trusted_servers"}, "tentacle trust add -trust-file /etc/tentacle/trusted_servers " + tpA},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := trustAddCommand(tt.cfg, tpA); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestTrustAddFiles: -files writes files= on the line, and list shows it.
func TestTrustAddFiles(t *testing.T) {
	home := t.TempDir()
	if _, stderr, code := runCLI("trust", "add", "-home", home, "-allow", "file", "-files", "/srv/app,/var/log/app", tpA, "pusher"); code != 0 ||
		!strings.Contains(stderr, "files=/srv/app,/var/log/app pusher") {
		t.Fatalf("add: %d %q", code, stderr)
	}
	if stdout, _, _ := runCLI("trust", "list", "-home", home); !strings.Contains(stdout, "allow=read,file files=/srv/app,/var/log/app  pusher") {
		t.Fatalf("list: %q", stdout)
	}
	if _, stderr, code := runCLI("trust", "add", "-home", home, "-files", "relative/dir", tpA); code != 1 || !strings.Contains(stderr, "is not an absolute folder") {
		t.Fatalf("relative -files: %d %q", code, stderr)
	}
	if _, stderr, code := runCLI("trust", "add", "-home", home, tpA, "name", "allow=read"); code != 1 || !strings.Contains(stderr, "looks like an option") {
		t.Fatalf("an option after the name: %d %q", code, stderr)
	}
}
