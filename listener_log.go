package main

// listener_log.go: what the listener logs. One line per request (changing
// ones at info, read-only polls at debug) and one per connection; the
// lines strangers can cause at will (rejected clients, dropped
// connections, timed-out handshakes) are rate-limited into summaries; a
// client's strings are clipped before they are logged.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// maxLogString bounds a client's string (a method name, a member's key)
// in a log line or an error message: an unknown method of 1 MB is logged
// as its first 256 bytes and its length.
const maxLogString = 256

// clip shortens s to at most n bytes, cut on a character boundary, saying
// how long it was.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", runePrefix(s, n), len(s))
}

// runePrefix is s cut to at most n bytes, on a character boundary.
func runePrefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// noisyLog writes the log lines that strangers can cause at will: the
// first noisyBurst of each kind in a period as they happen, the rest
// counted, and at the period's end one summary line a kind with the count
// and the busiest sources and reasons, so that a flood cannot flood the
// log while a single first-run mistake still shows at once.
type noisyLog struct {
	log *slog.Logger

	mu    sync.Mutex // guards kinds
	kinds map[string]*noisyKind
}

// noisyBurst lines of a kind are logged in full in each period.
const noisyBurst = 5

// maxNoisySources bounds the sources counted per kind and period; the
// rest count as "other".
const maxNoisySources = 1000

// noisyKind is one kind's period so far.
type noisyKind struct {
	level   slog.Level
	logged  int            // lines written in full
	count   int            // events not written
	sources map[string]int // of those, by source
	reasons map[string]int
}

// event logs one event of kind msg from source for reason, with attrs for
// a line written in full.
func (l *noisyLog) event(level slog.Level, msg, source, reason string, attrs ...any) {
	l.mu.Lock()
	if l.kinds == nil {
		l.kinds = map[string]*noisyKind{}
	}
	k := l.kinds[msg]
	if k == nil {
		k = &noisyKind{level: level, sources: map[string]int{}, reasons: map[string]int{}}
		l.kinds[msg] = k
	}
	if k.logged < noisyBurst {
		k.logged++
		l.mu.Unlock()
		l.log.Log(context.Background(), level, msg, attrs...)
		return
	}
	k.count++
	if _, ok := k.sources[source]; !ok && len(k.sources) >= maxNoisySources {
		source = "other"
	}
	k.sources[source]++
	k.reasons[reason]++
	l.mu.Unlock()
}

// flush writes the summary of each kind with events not yet written, and
// starts a new period.
func (l *noisyLog) flush(period time.Duration) {
	l.mu.Lock()
	kinds := l.kinds
	l.kinds = nil
	l.mu.Unlock()
	for _, msg := range slices.Sorted(maps.Keys(kinds)) {
		if k := kinds[msg]; k.count > 0 {
			l.log.Log(context.Background(), k.level, msg, "repeated", k.count, "period", period,
				"top_sources", topCounts(k.sources, 5), "reasons", topCounts(k.reasons, 3))
		}
	}
}

// every flushes l each period (and once more when stopped), also calling
// tick; the returned function stops it.
func (l *noisyLog) every(period time.Duration, tick func(time.Time)) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				l.flush(period)
				tick(now)
			case <-done:
				l.flush(period)
				return
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// topCounts is "key=count" for the n largest counts, largest first.
func topCounts(counts map[string]int, n int) string {
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), cmp.Compare(a, b))
	})
	var b strings.Builder
	for i, k := range keys[:min(n, len(keys))] {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", clip(k, maxLogString), counts[k])
	}
	return b.String()
}

// rejection says why the trust list refused thumbprint tp from addr (a
// reason to count by) and what would let it in.
func (s *server) rejection(list *trustList, tp string, addr net.Addr, now time.Time) (reason, fix string) {
	file := s.cfg.trustPath()
	e := list.entries[tp]
	switch {
	case e == nil && s.cfg.TrustFile != "":
		return "not trusted", fmt.Sprintf("if this client should be trusted, add the line %q to the trust file %q", tp+" NAME", file)
	case e == nil:
		return "not trusted", "if this client should be trusted: " + trustAddCommand(s.cfg, tp)
	case !e.Expires.IsZero() && !now.Before(e.Expires):
		return "expired", fmt.Sprintf("its trust entry %q has expired: give it a later expires= (or none) in %q if it should still be trusted", e.Name, file)
	}
	return "not from an address its from= admits", fmt.Sprintf("its trust entry %q admits only from=%s: add %s to that option in %q if this client may connect from there",
		e.Name, joinPrefixes(e), addrIP(addr).Unmap(), file)
}

func joinPrefixes(e *trustEntry) string {
	s := make([]string, len(e.From))
	for i, p := range e.From {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// requestDone is what the request log line says of a handled request.
type requestDone struct {
	method   string
	duration time.Duration
	err      error
	quiet    bool // a read-only request without a body (ping, job.status): debug when it succeeds
}

// logRequest writes the one line per request: at info for what changes
// something, moves a file, or fails; at debug for read-only polls (a
// follower's job.status long polls would otherwise be most of the log).
func (s *server) logRequest(c *conn, d requestDone) {
	outcome := "ok"
	if d.err != nil {
		var re *rpcError
		if errors.As(d.err, &re) {
			outcome = re.Kind()
		} else {
			outcome = kindInternal
		}
	}
	level := connLevel(c.peer.entry)
	if d.quiet && d.err == nil {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(s.ctx, level) {
		return // a poll at info: not even its address is formatted
	}
	s.log.Log(s.ctx, level, "request", "peer", c.peer.addr.String(), "thumbprint", c.peer.thumbprint, "name", c.peer.entry.Name,
		"method", clip(d.method, maxLogString), "duration", d.duration.Round(time.Microsecond), "outcome", outcome)
}

// connLevel is the level of a connection's log lines: the agent's own
// health probe (every few seconds under Docker or Kubernetes) logs at debug,
// so it does not drown the lines that matter.
func connLevel(e *trustEntry) slog.Level {
	if e != nil && e.self {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

func errString(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "closed by client"
	}
	return err.Error()
}
