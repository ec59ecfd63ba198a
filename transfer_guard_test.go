package main

// transfer_guard_test.go: what file.* may reach (the agent's own state
// never; files= folders only), paths too long or too deep, files that are
// not regular, and disk space promised to concurrent uploads.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// download fetches path through the protocol.
func download(c *clientConn, path string) ([]byte, error) {
	var hdr fileResult
	r, n, err := c.callDownload("file.download", map[string]any{"path": path}, &hdr)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(r, n))
}

// dialAs connects to a as id.
func dialAs(t testing.TB, a *testAgent, id *identity) *clientConn {
	t.Helper()
	c, err := dialAgent(a.addr, id, a.thumbprint, "", 10*time.Second, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mkLink(t testing.TB, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestFileGuardOwnState: whatever a client's allow=, file.* never reads or
// writes the agent's key, certificate, trust list, audit log, lock, work/,
// packages/, uploads/ or an app's releases, through links, "..", hard
// links and bind mounts too; files/ and apps/<app>/shared/ stay open.
func TestFileGuardOwnState(t *testing.T) {
	a := startAgent(t)
	fileOnly := newTestIdentity(t)
	writeTrust(t, a.home, a.client.thumbprint+" test-client\n"+fileOnly.thumbprint+" allow=file file-only\n")
	h := a.home
	out := t.TempDir()
	writeFile(t, filepath.Join(h, "work", "probe"), []byte("job"))
	writeFile(t, filepath.Join(h, "packages", "probe"), []byte("pkg"))
	writeFile(t, filepath.Join(h, "uploads", "probe"), []byte("journal"))
	writeFile(t, filepath.Join(h, "audit.log.1"), []byte("{}\n"))
	writeFile(t, filepath.Join(h, "apps", "shop", "v1", "Deploy.sh"), []byte("echo v1"))
	writeFile(t, filepath.Join(h, "apps", "shop", ".releases.json"), []byte("{}"))
	writeFile(t, filepath.Join(h, "apps", "shop", "shared", "config.yml"), []byte("shared"))
	mkLink(t, "v1", filepath.Join(h, "apps", "shop", "current"))
	writeFile(t, filepath.Join(a.cfg.filesDir(), "ok.txt"), []byte("ok"))
	writeFile(t, filepath.Join(out, "plain.txt"), []byte("plain"))
	mkLink(t, filepath.Join("..", "tentacle.key"), filepath.Join(a.cfg.filesDir(), "key"))
	mkLink(t, homeTrustPath(h), filepath.Join(a.cfg.filesDir(), "trust"))
	mkLink(t, "..", filepath.Join(a.cfg.filesDir(), "up"))
	mkLink(t, filepath.Join(out, "plain.txt"), filepath.Join(a.cfg.filesDir(), "outside"))
	mkLink(t, h, filepath.Join(out, "home"))
	if err := os.Link(a.cfg.keyPath(), filepath.Join(out, "hard-key")); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(a.cfg.keyPath())
	trust, _ := os.ReadFile(homeTrustPath(h))

	forbidden := []struct{ name, path string }{
		{"key", a.cfg.keyPath()},
		{"certificate", a.cfg.certPath()},
		{"trust list", homeTrustPath(h)},
		{"audit log", a.cfg.auditPath()},
		{"rotated audit log", filepath.Join(h, "audit.log.1")},
		{"lock", filepath.Join(h, "agent.lock")},
		{"work", filepath.Join(h, "work", "probe")},
		{"packages", filepath.Join(h, "packages", "probe")},
		{"uploads journal", filepath.Join(h, "uploads", "probe")},
		{"release through current", filepath.Join(h, "apps", "shop", "current", "Deploy.sh")},
		{"release", filepath.Join(h, "apps", "shop", "v1", "Deploy.sh")},
		{"release record", filepath.Join(h, "apps", "shop", ".releases.json")},
		{"relative link to the key", "key"},
		{"absolute link to the trust list", "trust"},
		{"link to .. then work", "up/work/probe"},
		{"cleaned ..", filepath.Join(a.cfg.filesDir(), "..", "tentacle.key")},
		{"outside link to the home", filepath.Join(out, "home", "tentacle.key")},
		{"hard link to the key", filepath.Join(out, "hard-key")},
	}
	allowed := []struct{ name, path, want string }{
		{"files", "ok.txt", "ok"},
		{"an app's shared folder", filepath.Join(h, "apps", "shop", "shared", "config.yml"), "shared"},
		{"outside the home", filepath.Join(out, "plain.txt"), "plain"},
		{"a link from files to outside", "outside", "plain"},
	}
	for _, who := range []struct {
		name string
		id   *identity
	}{{"unrestricted", a.client}, {"allow=file", fileOnly}} {
		c := dialAs(t, a, who.id)
		for _, tt := range forbidden {
			t.Run(who.name+"/download "+tt.name, func(t *testing.T) {
				got, err := download(c, tt.path)
				if rpcKind(err) != kindForbidden || !strings.Contains(err.Error(), "file.* never reaches") {
					t.Fatalf("download %q: %d bytes, err %v; want forbidden", tt.path, len(got), err)
				}
				if err := ping(c); err != nil {
					t.Fatal(err)
				}
			})
		}
		for _, tt := range allowed {
			t.Run(who.name+"/download "+tt.name, func(t *testing.T) {
				if got, err := download(c, tt.path); err != nil || string(got) != tt.want {
					t.Fatalf("download %q: %q, %v; want %q", tt.path, got, err, tt.want)
				}
			})
		}
	}

	c := dialAs(t, a, fileOnly)
	for _, tt := range []struct{ name, path, mustNotExist string }{
		{"the trust list", homeTrustPath(h), ""},
		{"a link to the trust list", "trust", ""},
		{"the key", a.cfg.keyPath(), ""},
		{"a new file in the home", filepath.Join(h, "extra"), filepath.Join(h, "extra")},
		{"a new folder in the home", filepath.Join(h, "newdir", "x"), filepath.Join(h, "newdir")},
		{"a new job folder", filepath.Join(h, "work", "newjob", "script.sh"), filepath.Join(h, "work", "newjob")},
		{"a parent that links into work", "up/work/x", filepath.Join(h, "work", "x")},
		{"a release", filepath.Join(h, "apps", "shop", "v1", "Deploy.sh"), ""},
		{"a release through current", filepath.Join(h, "apps", "shop", "current", "x"), filepath.Join(h, "apps", "shop", "v1", "x")},
		{"a new app", filepath.Join(h, "apps", "new", "shared", "x"), filepath.Join(h, "apps", "new")},
		{"the audit log", a.cfg.auditPath(), ""},
	} {
		t.Run("upload to "+tt.name, func(t *testing.T) {
			_, err := upload(c, map[string]any{"path": tt.path}, []byte("0000 pwned allow=script\n"))
			if rpcKind(err) != kindForbidden {
				t.Fatalf("upload %q: err %v, want forbidden", tt.path, err)
			}
			if tt.mustNotExist != "" {
				if _, err := os.Lstat(tt.mustNotExist); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%q was made: %v", tt.mustNotExist, err)
				}
			}
			if err := ping(c); err != nil {
				t.Fatal(err)
			}
		})
	}
	if got, _ := os.ReadFile(a.cfg.keyPath()); !bytes.Equal(got, key) {
		t.Fatal("the key changed")
	}
	if got, _ := os.ReadFile(homeTrustPath(h)); !bytes.Equal(got, trust) {
		t.Fatalf("the trust list changed: %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(a.cfg.filesDir(), "trust")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link to the trust list was replaced: %v", err)
	}
	for _, p := range []string{filepath.Join(h, "apps", "shop", "shared", "new.cfg"), filepath.Join(a.cfg.filesDir(), "sub", "a.txt")} {
		if _, err := upload(c, map[string]any{"path": p}, []byte("fine")); err != nil {
			t.Fatalf("upload %q: %v", p, err)
		}
	}
	// An upload through a link replaces the file it leads to; the link stays.
	if _, err := upload(c, map[string]any{"path": "outside"}, []byte("through the link")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "plain.txt")); string(got) != "through the link" {
		t.Fatalf("the link's target holds %q", got)
	}
	if fi, err := os.Lstat(filepath.Join(a.cfg.filesDir(), "outside")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v", err)
	}

	t.Run("bind mount of the home", func(t *testing.T) {
		bind := filepath.Join(t.TempDir(), "bind")
		os.Mkdir(bind, 0o700)
		if out, err := exec.Command("mount", "--bind", h, bind).CombinedOutput(); err != nil {
			t.Skipf("cannot bind-mount here (%v: %s)", err, out)
		}
		defer exec.Command("umount", bind).Run()
		if _, err := download(c, filepath.Join(bind, "tentacle.key")); rpcKind(err) != kindForbidden {
			t.Fatalf("key through a bind mount: %v, want forbidden", err)
		}
		if _, err := upload(c, map[string]any{"path": filepath.Join(bind, "trusted_servers")}, []byte("x")); rpcKind(err) != kindForbidden {
			t.Fatalf("trust list through a bind mount: %v, want forbidden", err)
		}
	})
}

// TestFileGuardMountedIdentity: a key, certificate and trust list mounted
// outside the home (a Secret, a ConfigMap with its ..data links) are just as
// unreachable.
func TestFileGuardMountedIdentity(t *testing.T) {
	secret, configMap := t.TempDir(), t.TempDir()
	if _, err := newIdentity(filepath.Join(secret, "tls.key"), filepath.Join(secret, "tls.crt")); err != nil {
		t.Fatal(err)
	}
	client := newTestIdentity(t)
	data := filepath.Join(configMap, "..2026_01_01")
	writeFile(t, filepath.Join(data, "trusted_servers"), []byte(client.thumbprint+" mounted\n"))
	mkLink(t, filepath.Base(data), filepath.Join(configMap, "..data"))
	mkLink(t, filepath.Join("..data", "trusted_servers"), filepath.Join(configMap, "trusted_servers"))
	a := startAgent(t, func(c *config) {
		c.CertFile, c.KeyFile = filepath.Join(secret, "tls.crt"), filepath.Join(secret, "tls.key")
		c.TrustFile = filepath.Join(configMap, "trusted_servers")
	})
	c := dialAs(t, a, client)
	for _, p := range []string{
		filepath.Join(secret, "tls.key"),
		filepath.Join(secret, "tls.crt"),
		filepath.Join(configMap, "trusted_servers"),
		filepath.Join(configMap, "..data", "trusted_servers"),
		filepath.Join(data, "trusted_servers"),
	} {
		if _, err := download(c, p); rpcKind(err) != kindForbidden {
			t.Errorf("download %q: %v, want forbidden", p, err)
		}
		if _, err := upload(c, map[string]any{"path": p}, []byte("x")); rpcKind(err) != kindForbidden {
			t.Errorf("upload %q: %v, want forbidden", p, err)
		}
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(secret, "notes.txt")}, []byte("fine")); err != nil {
		t.Fatalf("another file beside the mounted key: %v", err)
	}
}

// TestFileGuardRace: a folder swapped between a real one and a link to
// the home while downloads run never yields the agent's key.
func TestFileGuardRace(t *testing.T) {
	a := startAgent(t)
	key, _ := os.ReadFile(a.cfg.keyPath())
	x := t.TempDir()
	writeFile(t, filepath.Join(x, "real", "tentacle.key"), []byte("decoy"))
	mkLink(t, a.home, filepath.Join(x, "link"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d := filepath.Join(x, "d")
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, n := range []string{"real", "link"} {
				os.Rename(filepath.Join(x, n), d)
				os.Rename(d, filepath.Join(x, n))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	c := a.dial(t)
	decoys := 0
	for range 300 {
		got, err := download(c, filepath.Join(x, "d", "tentacle.key"))
		switch {
		case bytes.Equal(got, key):
			t.Fatal("the agent's key was downloaded through a swapped folder")
		case err == nil:
			decoys++
		case rpcKind(err) != kindForbidden && rpcKind(err) != kindNotFound && rpcKind(err) != kindConflict && rpcKind(err) != kindIO:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	t.Logf("%d of 300 downloads got the decoy", decoys)
}

// TestFilesOption: a trust entry's files= confines file.* to its folders,
// which neither "..", links nor relative paths leave; the agent's own state
// stays closed even inside them.
func TestFilesOption(t *testing.T) {
	a := startAgent(t)
	base := t.TempDir()
	in, outside := filepath.Join(base, "in"), filepath.Join(base, "out")
	writeFile(t, filepath.Join(in, "x"), []byte("in"))
	writeFile(t, filepath.Join(outside, "x"), []byte("out"))
	writeFile(t, filepath.Join(a.cfg.filesDir(), "r.txt"), []byte("files"))
	mkLink(t, filepath.Join(outside, "x"), filepath.Join(in, "abs-out"))
	mkLink(t, filepath.Join("..", "out", "x"), filepath.Join(in, "rel-out"))
	mkLink(t, filepath.Join(in, "x"), filepath.Join(in, "abs-in"))
	mkLink(t, "x", filepath.Join(in, "rel-in"))
	confined, atHome := newTestIdentity(t), newTestIdentity(t)
	writeTrust(t, a.home, fmt.Sprintf("%s test-client\n%s allow=file files=%s,%s confined\n%s files=%s at-home\n",
		a.client.thumbprint, confined.thumbprint, in, a.cfg.filesDir(), atHome.thumbprint, a.home))
	c := dialAs(t, a, confined)
	for _, tt := range []struct {
		name, path, want, kind string
	}{
		{"inside", filepath.Join(in, "x"), "in", ""},
		{"an absolute link inside", filepath.Join(in, "abs-in"), "in", ""},
		{"a relative link inside", filepath.Join(in, "rel-in"), "in", ""},
		{"a relative path under files/, one of its folders", "r.txt", "files", ""},
		{"outside", filepath.Join(outside, "x"), "", kindForbidden},
		{"an absolute link out", filepath.Join(in, "abs-out"), "", kindForbidden},
		{"a relative link out", filepath.Join(in, "rel-out"), "", kindForbidden},
		{"a prefix that is not the folder", in + "2/x", "", kindForbidden},
		{"the agent's key", a.cfg.keyPath(), "", kindForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := download(c, tt.path)
			if rpcKind(err) != tt.kind || tt.kind == "" && string(got) != tt.want {
				t.Fatalf("download %q: %q, %v; want %q, %q", tt.path, got, err, tt.want, tt.kind)
			}
		})
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(in, "new", "deep", "f")}, []byte("made")); err != nil {
		t.Fatalf("upload inside, folders made: %v", err)
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(outside, "new", "f")}, []byte("no")); rpcKind(err) != kindForbidden {
		t.Fatalf("upload outside: %v, want forbidden", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a folder was made outside files=: %v", err)
	}
	if _, err := upload(c, map[string]any{"path": filepath.Join(in, "rel-out")}, []byte("no")); rpcKind(err) != kindForbidden {
		t.Fatalf("upload through a link out: %v, want forbidden", err)
	}
	if got, _ := os.ReadFile(filepath.Join(outside, "x")); string(got) != "out" {
		t.Fatalf("the file outside changed: %q", got)
	}
	if err := dialAs(t, a, confined).call("script.start", map[string]any{"script": "true"}, nil); rpcKind(err) != kindForbidden {
		t.Fatalf("script.start by an allow=file entry: %v", err)
	}

	h := dialAs(t, a, atHome)
	if _, err := download(h, a.cfg.keyPath()); rpcKind(err) != kindForbidden {
		t.Fatalf("files=<home> reached the key: %v", err)
	}
	if got, err := download(h, "r.txt"); err != nil || string(got) != "files" {
		t.Fatalf("files=<home> and files/r.txt: %q, %v", got, err)
	}
}

// TestPathShape: a path over PATH_MAX or with more than a few hundred
// elements is refused at once, before the file system is touched.
func TestPathShape(t *testing.T) {
	a := startAgent(t)
	c := a.dial(t)
	deep := filepath.Join(a.cfg.filesDir(), strings.Repeat("d/", 300)+"f")
	for _, tt := range []struct{ name, path, want string }{
		{"over PATH_MAX", "/" + strings.Repeat("a", 5000), "at most 4096"},
		{"300 elements", deep, "more than 256 elements"},
		{"900 KB of elements", strings.Repeat("a/", 450000), "at most 4096"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := upload(c, map[string]any{"path": tt.path}, []byte("x"))
			if rpcKind(err) != kindInvalidParams || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("upload: %v, want invalid_params %q", err, tt.want)
			}
			if _, err := download(c, tt.path); rpcKind(err) != kindInvalidParams {
				t.Fatalf("download: %v, want invalid_params", err)
			}
			// What is left is reading the line: under -race 900 KB of JSON
			// each way takes a few seconds; walking it took minutes.
			t.Logf("upload and download refused in %v", time.Since(start))
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("took %v", d)
			}
			if err := ping(c); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(a.cfg.filesDir(), "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the deep path made folders: %v", err)
	}
}

// TestNonRegularFiles: a FIFO, a device, a socket or a folder is refused at
// once, never opened for reading (a FIFO would block), never replaced.
func TestNonRegularFiles(t *testing.T) {
	a := startAgent(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if out, err := exec.Command("mkfifo", fifo).CombinedOutput(); err != nil {
		t.Skipf("no mkfifo here (%v: %s)", err, out)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Skipf("no unix sockets here: %v", err)
	}
	defer ln.Close()
	c := a.dial(t)
	for _, tt := range []struct{ name, path, says string }{
		{"FIFO", fifo, "a FIFO"},
		{"device", os.DevNull, "a device"},
		{"socket", sock, "a socket"},
		{"folder", dir, "a folder"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.tc.SetDeadline(time.Now().Add(5 * time.Second))
			defer c.tc.SetDeadline(time.Time{})
			if _, err := download(c, tt.path); rpcKind(err) != kindNotFound || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("download: %v, want not_found saying %q", err, tt.says)
			}
			if _, err := upload(c, map[string]any{"path": tt.path}, []byte("x")); rpcKind(err) != kindConflict {
				t.Fatalf("upload: %v, want conflict", err)
			}
			if err := ping(c); err != nil {
				t.Fatal(err)
			}
		})
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the FIFO was replaced: %v", err)
	}
}

// TestConcurrentUploadsReserveSpace: two uploads that each fit but not
// together: the second is refused while the first holds its space, and the
// space comes back when the first ends, committed or cut.
func TestConcurrentUploadsReserveSpace(t *testing.T) {
	fs := mountTmpfs(t, "8m")
	if fs == "" {
		t.Skip("needs a tmpfs the test can mount (root on Linux)")
	}
	a := startAgent(t)
	first := randBytes(5 << 20)
	start := func(c *clientConn, name string) {
		sendHead(t, c, "file.upload", map[string]any{"path": filepath.Join(fs, name), "size": len(first)}, first[:1<<20])
		waitFor(t, "1 MiB in the first upload's temporary file", 10*time.Second, func() bool {
			for _, p := range leftovers(a, fs) {
				if fi, err := os.Stat(p); err == nil && filepath.Dir(p) == fs && fi.Size() >= 1<<20 {
					return true
				}
			}
			return false
		})
	}
	// The second is refused before a byte of it is written (its body is
	// read and discarded, PROTOCOL §3). Without the promise it would pass
	// the check, as 7 MiB are free, and fit, and the first would then fail
	// for space.
	second := func() error {
		_, err := upload(a.dial(t), map[string]any{"path": filepath.Join(fs, "second")}, first)
		return err
	}

	c1 := a.dial(t)
	start(c1, "first")
	if err := second(); rpcKind(err) != kindTooLarge || !strings.Contains(err.Error(), "promised to uploads in progress") {
		t.Fatalf("second upload while the first holds its space: %v, want too_large at once", err)
	}
	if _, err := c1.tc.Write(first[1<<20:]); err != nil {
		t.Fatal(err)
	}
	var res fileResult
	if err := c1.receive(&res); err != nil {
		t.Fatalf("first upload: %v", err)
	}
	os.Remove(filepath.Join(fs, "first"))

	c2 := a.dial(t)
	start(c2, "cut")
	c2.Close()
	waitFor(t, "the cut upload's temporary file to go", 10*time.Second, func() bool { return len(leftovers(a, fs)) == 0 })
	c3 := a.dial(t)
	if _, err := upload(c3, map[string]any{"path": filepath.Join(fs, "after")}, first); err != nil {
		t.Fatalf("upload after the cut one released its space: %v", err)
	}
	a.srv.pkgs.space.mu.Lock()
	left := len(a.srv.pkgs.space.reserved)
	a.srv.pkgs.space.mu.Unlock()
	if left != 0 {
		t.Fatalf("space still promised after every upload ended: %v", a.srv.pkgs.space.reserved)
	}
}
