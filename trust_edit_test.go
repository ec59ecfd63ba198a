package main

// trust_edit_test.go: "tentacle trust" edits under load and mistakes: no
// entry lost to a concurrent edit, nothing left by a killed one, no home
// made by a typo, and fix hints that name the home.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

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
