package main

// transfer_client.go: the client's side of files and packages: the upload,
// download and push commands, the sending pipeline and the progress bar.
//
// Output rules: results go to stdout, one line each; the progress bar goes
// to stderr only when stderr is a terminal, and a non-terminal stderr gets
// errors only.

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// streamTo writes size bytes of src to w in large writes. Another goroutine
// reads src ahead, so reading the local file overlaps the encryption and the
// network. readErr is src's (io.ErrUnexpectedEOF if it ends early), writeErr
// the connection's.
func streamTo(w io.Writer, src io.Reader, size int64, progress func(int)) (readErr, writeErr error) {
	type chunk struct {
		buf *[]byte
		n   int
		err error
	}
	full := make(chan chunk, xferBufs)
	free := make(chan *[]byte, xferBufs)
	for range xferBufs {
		free <- getBuf()
	}
	stop := make(chan struct{})
	go func() {
		defer close(full)
		var read int64
		for read < size {
			var b *[]byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			m, err := io.ReadFull(src, (*b)[:min(int64(len(*b)), size-read)])
			read += int64(m)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			full <- chunk{b, m, err}
			if err != nil {
				return
			}
		}
	}()
	for c := range full {
		if writeErr == nil && c.n > 0 {
			if _, writeErr = w.Write((*c.buf)[:c.n]); writeErr != nil {
				close(stop)
			} else if progress != nil {
				progress(c.n)
			}
		}
		if c.err != nil && readErr == nil {
			readErr = c.err
		}
		free <- c.buf
	}
	for range xferBufs {
		putBuf(<-free)
	}
	return readErr, writeErr
}

// callStream sends a request whose body is size bytes of body, written in
// large writes straight to the TLS connection, and decodes the answer. If
// the agent refused the request and closed the connection mid-body, its
// answer (which says why) is returned rather than the broken pipe. After a
// non-rpcError error the connection is out of step: close it.
func (c *clientConn) callStream(method string, params any, body io.Reader, size int64, progress func(int), result any) error {
	if err := c.send(method, params, nil, 0); err != nil {
		return err
	}
	b := batchOf(c.tc)
	b.start()
	readErr, writeErr := streamTo(flushWriter{c.tc, b}, body, size, progress)
	if err := b.end(); writeErr == nil {
		writeErr = err
	}
	if readErr != nil {
		return fmt.Errorf("failed to read what to send: %v", readErr)
	}
	if writeErr != nil {
		c.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		var re *rpcError
		if err := c.receive(result); errors.As(err, &re) {
			return re
		}
		return fmt.Errorf("the connection broke while sending: %v", writeErr)
	}
	return c.receive(result)
}

// flushWriter writes to a TLS connection and then flushes its batch.
type flushWriter struct {
	tc *tls.Conn
	b  *batchConn
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.tc.Write(p)
	if err == nil {
		err = f.b.flush()
	}
	return n, err
}

// fileResult is the answer of file.upload, and the header of file.download.
type fileResult struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Mode   string `json:"mode,omitempty"`
}

// openRegular opens a local file that must be a regular file.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%q is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// openHashed opens the local file a command sends and hashes it, with a
// progress bar on a terminal. On failure it has said why and f is nil.
func (c *clientCmd) openHashed(path string) (f *os.File, fi os.FileInfo, sha string) {
	f, fi, err := openRegular(path)
	if err != nil {
		fmt.Fprintf(c.stderr, "tentacle %s: %v\n", c.name, err)
		return nil, nil, ""
	}
	if sha, err = hashFile(f, fi.Size(), progressTo(c.stderr)); err != nil {
		f.Close()
		fmt.Fprintf(c.stderr, "tentacle %s: failed to read %q: %v\n", c.name, path, err)
		return nil, nil, ""
	}
	return f, fi, sha
}

// hashFile returns the SHA-256 of f's first size bytes.
func hashFile(f *os.File, size int64, progress io.Writer) (string, error) {
	bar := newProgressBar(progress, "hashing", size)
	defer bar.done()
	h := sha256.New()
	buf := getBuf()
	defer putBuf(buf)
	r := io.NewSectionReader(f, 0, size)
	for {
		n, err := r.Read(*buf)
		h.Write((*buf)[:n])
		bar.add(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// uploadFile sends the local file to remote on the agent with its SHA-256,
// so the agent writes it only if every byte arrived intact. mode "" lets
// the agent choose (an existing file's mode, else 0644).
func uploadFile(cc *clientConn, local, remote, mode string, overwrite bool, progress io.Writer) (*fileResult, error) {
	f, fi, err := openRegular(local)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := fi.Size()
	sha, err := hashFile(f, size, progress)
	if err != nil {
		return nil, err
	}
	return uploadOpen(cc, f, size, sha, remote, mode, overwrite, progress)
}

// uploadOpen is uploadFile for an open file whose digest is known (fan-out
// mode hashes once and sends to every agent).
func uploadOpen(cc *clientConn, f *os.File, size int64, sha, remote, mode string, overwrite bool, progress io.Writer) (*fileResult, error) {
	params := map[string]any{"path": remote, "size": size, "sha256": sha, "overwrite": overwrite}
	if mode != "" {
		params["mode"] = mode
	}
	bar := newProgressBar(progress, "sending", size)
	var res fileResult
	err := cc.callStream("file.upload", params, io.NewSectionReader(f, 0, size), size, bar.add, &res)
	bar.done()
	if err != nil {
		return nil, err
	}
	if res.SHA256 != sha {
		return nil, fmt.Errorf("the agent reports sha256 %s for %q, not %s", res.SHA256, res.Path, sha)
	}
	return &res, nil
}

// downloadFile fetches remote from the agent into local (or into the folder
// local, under the remote name), written atomically and kept only if its
// SHA-256 matches the one the agent announced. After an error the
// connection may be out of step: close it.
func downloadFile(cc *clientConn, remote, local string, progress io.Writer) (*fileResult, string, error) {
	var res fileResult
	body, size, err := cc.callDownload("file.download", map[string]any{"path": remote}, &res)
	if err != nil {
		return nil, "", err
	}
	if fi, err := os.Stat(local); err == nil && fi.IsDir() {
		local = filepath.Join(local, filepath.Base(filepath.FromSlash(res.Path)))
	}
	dir := filepath.Dir(local)
	f, err := os.CreateTemp(dir, "."+filepath.Base(local)+".tentacle-*.tmp")
	if err != nil {
		return nil, "", err
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bar := newProgressBar(progress, "receiving", size)
	h := sha256.New()
	n, rerr, werr := pipeToFile(f, 0, body, size, h, bar.add)
	bar.done()
	switch {
	case werr != nil:
		return nil, "", fmt.Errorf("failed to write %q: %v", local, werr)
	case rerr != nil:
		return nil, "", fmt.Errorf("the download stopped after %d of %d bytes: %v", n, size, rerr)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != res.SHA256 {
		return nil, "", fmt.Errorf("the bytes received have sha256 %s, not the %s the agent announced: %q was not written", got, res.SHA256, local)
	}
	mode, err := parseMode(res.Mode)
	if err != nil {
		mode = 0o644
	}
	keep = true // commitFile removes it on failure
	if err := commitFile(f, local, mode, true); err != nil {
		return nil, "", err
	}
	return &res, local, nil
}

// pushPackage puts the package file at path into the agent's cache and
// returns its SHA-256. It asks package.stat first: nothing is sent if the
// agent has it, and a partial upload is resumed where it stopped.
func pushPackage(cc *clientConn, path string, progress io.Writer) (sha string, err error) {
	f, fi, err := openRegular(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if sha, err = hashFile(f, fi.Size(), progress); err != nil {
		return "", err
	}
	_, err = pushOpen(cc, f, fi.Size(), sha, progress)
	return sha, err
}

// pushOpen is pushPackage for an open file whose digest is known. sent
// tells whether any byte had to be sent.
func pushOpen(cc *clientConn, f *os.File, size int64, sha string, progress io.Writer) (sent bool, err error) {
	var st packageResult
	if err := cc.call("package.stat", map[string]any{"sha256": sha}, &st); err != nil {
		return false, err
	}
	for attempt := 0; ; attempt++ {
		if st.Present {
			return sent, nil
		}
		off := st.Size
		if off > size { // a partial of another length: the agent starts it over
			off = 0
		}
		bar := newProgressBar(progress, "pushing", size)
		bar.add(int(off))
		sent = true
		params := map[string]any{"sha256": sha, "total": size, "offset": off, "size": size - off}
		err = cc.callStream("package.upload", params, io.NewSectionReader(f, off, size-off), size-off, bar.add, &st)
		bar.done()
		if err == nil && !st.Present {
			err = fmt.Errorf("the agent holds %d of %d bytes of package %s but did not complete it", st.Size, size, sha)
		}
		if err == nil || rpcKindOf(err) != kindConflict || attempt > 0 {
			return sent, err
		}
		// The partial moved on meanwhile (another push, or an earlier cut
		// upload): ask again where to resume, once.
		if serr := cc.call("package.stat", map[string]any{"sha256": sha}, &st); serr != nil || st.Size == off && !st.Present {
			return sent, err
		}
	}
}

// rpcKindOf is the protocol kind of an agent's error, or "".
func rpcKindOf(err error) string {
	var re *rpcError
	if errors.As(err, &re) {
		return re.Kind()
	}
	return ""
}

// progressTo returns stderr if it is a terminal (progress bars go there),
// else nil: redirected output gets no bar.
func progressTo(stderr io.Writer) io.Writer {
	if f, ok := stderr.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return stderr
		}
	}
	return nil
}

// progressBar draws one updating line: label, percentage, bar, bytes, rate
// and ETA. It appears only once a transfer has run for barDelay, so quick
// ones leave no trace. A nil *progressBar does nothing.
type progressBar struct {
	w     io.Writer
	label string
	total int64
	start time.Time

	mu    sync.Mutex // guards n, drawn
	n     int64
	drawn time.Time // zero until first drawn
}

const (
	barDelay = 500 * time.Millisecond
	barEvery = 200 * time.Millisecond
	barWidth = 24
)

func newProgressBar(w io.Writer, label string, total int64) *progressBar {
	if w == nil {
		return nil
	}
	return &progressBar{w: w, label: label, total: total, start: time.Now()}
}

func (p *progressBar) add(n int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n += int64(n)
	now := time.Now()
	if now.Sub(p.start) >= barDelay && now.Sub(p.drawn) >= barEvery {
		p.drawn = now
		io.WriteString(p.w, "\r"+p.line(now)+"\x1b[K")
	}
}

// done draws the final state and ends the line, if the bar was shown.
func (p *progressBar) done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.drawn.IsZero() {
		io.WriteString(p.w, "\r"+p.line(time.Now())+"\x1b[K\n")
	}
}

// line formats the bar as of now.
func (p *progressBar) line(now time.Time) string {
	frac := 1.0
	if p.total > 0 {
		frac = min(float64(p.n)/float64(p.total), 1)
	}
	fill := int(frac * barWidth)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", barWidth-fill)
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.n) / elapsed
	}
	eta := "--:--"
	if p.n >= p.total {
		eta = fmtDuration(now.Sub(p.start))
	} else if rate > 0 {
		eta = "ETA " + fmtDuration(time.Duration(float64(p.total-p.n)/rate*float64(time.Second)))
	}
	return fmt.Sprintf("%-9s %3.0f%% [%s] %9s %9s/s %s", p.label, frac*100, bar, humanBytes(p.n), humanBytes(int64(rate)), eta)
}

// humanBytes writes a byte count in binary units: 512 B, 1.5 KiB, 3.2 GiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, unit := float64(n), 0
	for f >= 1024 && unit < 5 {
		f /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTPE"[unit-1])
}

// fmtDuration writes m:ss or h:mm:ss.
func fmtDuration(d time.Duration) string {
	s := int64(d.Round(time.Second).Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

const usageUpload = `
Usage:
  tentacle upload [-home DIR] [-pin THUMBPRINT] [-proxy URL] [-mode MODE] [-no-overwrite] TARGET LOCAL REMOTE

Sends the file LOCAL to the agent at TARGET, which writes it at REMOTE: an
absolute path, or a path relative to the agent's <home>/files. The file's
SHA-256 goes with it and the agent writes the file only if every byte
arrived intact; REMOTE then appears whole or not at all (an earlier file
there stays as it was on any failure). The mode is LOCAL's unless -mode is
given. Prints where the file went and its SHA-256.

Example:
  tentacle upload -pin 5B01…9A agent.example app.conf /etc/app/app.conf
  tentacle upload -pin 5B01…9A -mode 0755 -no-overwrite agent.example tool.sh bin/tool.sh
`

func cmdUpload(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("upload", usageUpload, stdout, stderr)
	mode := c.fs.String("mode", "", "the file's `mode` on the agent, octal (default: LOCAL's)")
	noOverwrite := c.fs.Bool("no-overwrite", false, "fail (conflict) if REMOTE exists")
	if code, ok := c.parse(args, 3, 3); !ok {
		return code
	}
	addr, local, remote := c.args[0], c.args[1], c.args[2]
	if *mode != "" {
		if _, err := parseMode(*mode); err != nil {
			return c.usage("-mode %q: want an octal mode such as 0644 or 0755", *mode)
		}
	} else if fi, err := os.Stat(local); err == nil && !isWindows {
		*mode = fmt.Sprintf("%04o", fi.Mode().Perm())
	}
	if _, _, err := func() (*os.File, os.FileInfo, error) { // fail before dialling
		f, fi, err := openRegular(local)
		if f != nil {
			f.Close()
		}
		return f, fi, err
	}(); err != nil {
		fmt.Fprintf(stderr, "tentacle upload: %v\n", err)
		return 1
	}
	if c.fan != nil {
		return c.fanUpload(local, remote, *mode, !*noOverwrite)
	}
	cc := c.dial(addr)
	if cc == nil {
		return 1
	}
	defer cc.Close()
	res, err := uploadFile(cc, local, remote, *mode, !*noOverwrite, progressTo(stderr))
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(stdout, "uploaded %q to %q (%s, sha256 %s)\n", local, res.Path, humanBytes(res.Size), res.SHA256)
	return 0
}

const usageDownload = `
Usage:
  tentacle download [-home DIR] [-pin THUMBPRINT] [-proxy URL] ADDR REMOTE LOCAL

Fetches the file REMOTE (absolute, or relative to the agent's <home>/files)
from the agent at ADDR into LOCAL (or into the folder LOCAL under REMOTE's
name). LOCAL is written atomically and only if the bytes received match the
SHA-256 the agent announced; it takes REMOTE's mode. Prints where the file
went and its SHA-256.

Example:
  tentacle download -pin 5B01…9A agent.example /var/log/app/app.log ./app.log
`

func cmdDownload(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("download", usageDownload, stdout, stderr)
	if code, ok := c.parse(args, 3, 3); !ok {
		return code
	}
	cc := c.dial(c.args[0])
	if cc == nil {
		return 1
	}
	defer cc.Close()
	res, local, err := downloadFile(cc, c.args[1], c.args[2], progressTo(stderr))
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(stdout, "downloaded %q to %q (%s, sha256 %s)\n", res.Path, local, humanBytes(res.Size), res.SHA256)
	return 0
}

const usagePush = `
Usage:
  tentacle push [-home DIR] [-pin THUMBPRINT] [-proxy URL] TARGET PACKAGE-FILE

Puts a package (a zip, tar or tar.gz) into the agent's content-addressed
package cache and prints its SHA-256, which "tentacle deploy" takes. Sends
nothing if the agent already has it; resumes an interrupted upload where it
stopped, reconnecting up to 3 times if the connection breaks. The agent
checks the SHA-256 before the package enters its cache.

Example:
  tentacle push -pin 5B01…9A agent.example app-1.4.0.tar.gz
`

func cmdPush(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("push", usagePush, stdout, stderr)
	if code, ok := c.parse(args, 2, 2); !ok {
		return code
	}
	rest := c.args
	f, fi, sha := c.openHashed(rest[1])
	if f == nil {
		return 1
	}
	defer f.Close()
	if c.fan != nil {
		return c.fanPush(f, fi.Size(), sha)
	}
	progress := progressTo(stderr)
	const attempts = 4
	broken := false // the last attempt lost its connection
	for i := 1; ; i++ {
		cc := c.dial(rest[0])
		if cc == nil {
			return 1
		}
		sent, err := pushOpen(cc, f, fi.Size(), sha, progress)
		cc.Close()
		var re *rpcError
		isRPC := errors.As(err, &re)
		// After a broken connection the agent may not have noticed yet and
		// still hold the upload (conflict): give it a moment, then resume.
		if err != nil && i < attempts && (!isRPC || broken && re.Kind() == kindConflict) {
			if progress != nil {
				fmt.Fprintf(stderr, "tentacle push: %v; resuming\n", err)
			}
			broken = broken || !isRPC
			time.Sleep(time.Duration(i) * 500 * time.Millisecond)
			continue
		}
		if err != nil {
			return c.fail(err)
		}
		if !sent && progress != nil {
			fmt.Fprintf(stderr, "the agent already has this package: nothing sent\n")
		}
		fmt.Fprintln(stdout, sha)
		return 0
	}
}
