package main

// listener_admit.go: which new connections may start a TLS handshake, and
// how many connections one client key may hold (PROTOCOL §3 limits).
//
// The model is OpenSSH's: MaxStartups start:rate:full (random early drop as
// the handshakes in progress near their cap), PerSourceMaxStartups with
// PerSourceNetBlockSize (sources grouped by /24 and /64, so that one host's
// many IPv6 addresses are one source), and PerSourcePenalties (a source
// whose handshakes time out is refused for a while). Two things are added:
// the ClientHello has a deadline of its own, far shorter than the
// handshake's (a real client sends it at once), and a connection over its
// source's share waits its turn instead of being closed, so that an honest
// burst from one machine is served in order rather than reset.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// startups is -max-startups: START:RATE:FULL, or N for a hard cap of N.
// From START handshakes in progress on, a new connection is closed with
// probability RATE %, rising linearly to 100 % at FULL.
type startups struct{ start, rate, full int }

func (v *startups) String() string {
	if v.start == v.full {
		return strconv.Itoa(v.full)
	}
	return fmt.Sprintf("%d:%d:%d", v.start, v.rate, v.full)
}

func (v *startups) Set(s string) error {
	var n []int
	for f := range strings.SplitSeq(s, ":") {
		i, err := strconv.Atoi(f)
		if err != nil || i < 0 {
			n = nil
			break
		}
		n = append(n, i)
	}
	switch {
	case len(n) == 1 && n[0] >= 1:
		*v = startups{n[0], 100, n[0]}
	case len(n) == 3 && n[0] >= 1 && n[0] <= n[2] && n[1] <= 100:
		*v = startups{n[0], n[1], n[2]}
	default:
		return fmt.Errorf("want N or START:RATE:FULL such as 64:30:256 (1 ≤ START ≤ FULL, RATE a percentage), not %q", s)
	}
	return nil
}

// dropPercent is the chance in percent that a new connection is closed
// when pending handshakes are in progress.
func (v startups) dropPercent(pending int) int {
	switch {
	case pending >= v.full:
		return 100
	case pending < v.start:
		return 0
	}
	return v.rate + (100-v.rate)*(pending-v.start)/(v.full-v.start)
}

// netBlock is -source-net-block V4:V6: the prefix lengths by which source
// addresses are grouped into one source.
type netBlock struct{ v4, v6 int }

func (b *netBlock) String() string { return fmt.Sprintf("%d:%d", b.v4, b.v6) }

func (b *netBlock) Set(s string) error {
	v4, v6, ok := strings.Cut(s, ":")
	n4, err4 := strconv.Atoi(v4)
	n6, err6 := strconv.Atoi(v6)
	if !ok || err4 != nil || err6 != nil || n4 < 0 || n4 > 32 || n6 < 0 || n6 > 128 {
		return fmt.Errorf("want V4:V6 prefix lengths such as 24:64 (32:128 groups nothing), not %q", s)
	}
	*b = netBlock{n4, n6}
	return nil
}

// prefixes is -source-penalty-exempt: CIDR[,CIDR…] (a bare address is
// that address).
type prefixes []netip.Prefix

func (ps *prefixes) String() string {
	s := make([]string, len(*ps))
	for i, p := range *ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func (ps *prefixes) Set(v string) error {
	*ps = nil
	for c := range strings.SplitSeq(v, ",") {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return fmt.Errorf("%q is not a CIDR such as 192.0.2.0/24 or an address", c)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		*ps = append(*ps, p.Masked())
	}
	return nil
}

// exempts reports whether source src overlaps one of ps.
func (ps prefixes) exempts(src netip.Prefix) bool {
	for _, p := range ps {
		if p.Overlaps(src) {
			return true
		}
	}
	return false
}

// group is the source a connection from a counts under: its address's
// /24 (IPv4, IPv4-mapped IPv6 included) or /64 (IPv6) by default.
func (b netBlock) group(a net.Addr) netip.Prefix {
	ip := addrIP(a).Unmap()
	bits := b.v6
	if ip.Is4() {
		bits = b.v4
	}
	p, _ := ip.Prefix(bits)
	return p
}

// Penalties, in steps of -source-penalty (5 s by default): each handshake
// of a source that times out adds a step, up to penaltyMax steps; while
// more than penaltyGrace steps are ahead, its new connections are closed
// at once. So one slow or lost client is never refused, but a source
// whose sockets sit idle (4 of them, at the default) is, for a while.
const (
	penaltyGrace = 3
	penaltyMax   = 120
	// maxGroups bounds the sources remembered for their penalties; past it
	// new penalties are not recorded (OpenSSH's overflow:permissive).
	maxGroups = 65536
)

// Why a new connection was closed before its handshake (the drop log's
// reasons).
const (
	dropPenalized  = "its source is penalized for handshakes that timed out"
	dropRefused    = "its source was penalized while it waited for its turn"
	dropFull       = "too many handshakes in progress"
	dropSourceFull = "too many handshakes from its source"
	dropWaited     = "waited too long for its turn"
)

// admission counts the handshakes in progress, overall and by source.
type admission struct {
	lim *limits

	mu      sync.Mutex // guards pending, waiting and groups
	pending int        // handshakes in progress
	waiting int        // connections waiting for their source's turn
	groups  map[netip.Prefix]*sourceGroup
}

// sourceGroup is one source: its handshakes in progress with the
// connections waiting for a turn, and its penalty.
type sourceGroup struct {
	turns   turnLine
	penalty time.Time // penalized until then
}

func newAdmission(lim *limits) *admission {
	return &admission{lim: lim, groups: map[netip.Prefix]*sourceGroup{}}
}

// penalized reports whether g's new connections are refused at now.
func (a *admission) penalized(g *sourceGroup, now time.Time) bool {
	return a.lim.SourcePenalty > 0 && g.penalty.Sub(now) > penaltyGrace*a.lim.SourcePenalty
}

// penalizes reports whether timed-out handshakes from src are penalized:
// not from a source an operator exempted (a shared NAT or proxy whose
// other users should not share a misbehaving one's penalty).
func (a *admission) penalizes(src netip.Prefix) bool {
	return a.lim.SourcePenalty > 0 && !a.lim.SourcePenaltyExempt.exempts(src)
}

// admit decides on a new connection from src: start its handshake now (w
// nil, ok), wait for its turn (w, ok), or be closed for reason.
func (a *admission) admit(src netip.Prefix, now time.Time) (w *waiter, ok bool, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.groups[src]
	if g == nil {
		g = &sourceGroup{}
		a.groups[src] = g
	}
	defer a.tidy(src, g, now)
	if a.penalized(g, now) {
		return nil, false, dropPenalized
	}
	perSource := a.lim.MaxStartupsPerSource
	if g.turns.held < perSource {
		if p := a.lim.MaxStartups.dropPercent(a.pending); p > 0 && rand.IntN(100) < p {
			return nil, false, dropFull
		}
		g.turns.take(perSource, 0)
		a.pending++
		return nil, true, ""
	}
	if a.waiting >= a.lim.MaxStartups.full {
		return nil, false, dropFull
	}
	if w, ok = g.turns.take(perSource, 4*perSource); !ok {
		return nil, false, dropSourceFull
	}
	a.waiting++
	return w, true, ""
}

// leave takes w, which gave up waiting, out of src's queue. It reports
// whether w had been given its turn meanwhile: then it holds it.
func (a *admission) leave(src netip.Prefix, w *waiter) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w.got {
		return true
	}
	if g := a.groups[src]; g != nil && g.turns.leave(w) {
		a.waiting--
		a.tidy(src, g, time.Now())
	}
	return false
}

// done ends a handshake from src; timedOut adds to its source's penalty.
// The turn goes to the next connection waiting from the same source.
func (a *admission) done(src netip.Prefix, timedOut bool, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.groups[src]
	if timedOut && a.penalizes(src) && (len(a.groups) < maxGroups || g.penalty.After(now)) {
		step := a.lim.SourcePenalty
		g.penalty = maxTime(g.penalty, now).Add(step)
		g.penalty = minTime(g.penalty, now.Add(penaltyMax*step))
		if a.penalized(g, now) {
			a.waiting -= g.turns.refuseAll()
		}
	}
	if g.turns.give() {
		a.waiting--
	} else {
		a.pending--
	}
	a.tidy(src, g, now)
}

// tidy forgets a source with nothing in progress and no penalty left.
func (a *admission) tidy(src netip.Prefix, g *sourceGroup, now time.Time) {
	if g.turns.idle() && !g.penalty.After(now) {
		delete(a.groups, src)
	}
}

// sweep forgets the sources whose penalties have run out.
func (a *admission) sweep(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for src, g := range a.groups {
		a.tidy(src, g, now)
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// turnLine is a number of turns held, with a queue of connections waiting
// for one, first come first served. Its owner's mutex guards it.
type turnLine struct {
	held    int
	waiters []*waiter
}

// waiter is a connection waiting for its turn.
type waiter struct {
	ready chan struct{} // closed when the turn is given (got) or refused
	got   bool          // set before ready is closed
}

// take gives a turn now (nil, true) if fewer than limit are held, else a
// place in the queue if it holds fewer than queue, else nothing.
func (l *turnLine) take(limit, queue int) (*waiter, bool) {
	if l.held < limit {
		l.held++
		return nil, true
	}
	if len(l.waiters) >= queue {
		return nil, false
	}
	w := &waiter{ready: make(chan struct{})}
	l.waiters = append(l.waiters, w)
	return w, true
}

// give ends a turn: it goes to the first waiter (true) or is freed.
func (l *turnLine) give() bool {
	if len(l.waiters) == 0 {
		l.held--
		return false
	}
	w := l.waiters[0]
	l.waiters[0] = nil
	l.waiters = l.waiters[1:]
	w.got = true
	close(w.ready)
	return true
}

// leave takes w out of the queue, reporting whether it was there.
func (l *turnLine) leave(w *waiter) bool {
	i := slices.Index(l.waiters, w)
	if i >= 0 {
		l.waiters = slices.Delete(l.waiters, i, i+1)
	}
	return i >= 0
}

// refuseAll ends every wait without a turn and returns how many there were.
func (l *turnLine) refuseAll() int {
	n := len(l.waiters)
	for _, w := range l.waiters {
		close(w.ready)
	}
	l.waiters = nil
	return n
}

func (l *turnLine) idle() bool { return l.held == 0 && len(l.waiters) == 0 }

// await waits for w's turn (w nil: it was given at once) until timeout or
// ctx ends, and reports whether the turn came, and if not whether it was
// refused rather than waited for too long. leave takes a waiter that gives
// up out of its queue, reporting whether its turn came meanwhile.
func await(ctx context.Context, w *waiter, timeout time.Duration, leave func(*waiter) bool) (got, refused bool) {
	if w == nil {
		return true, false
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.ready:
		return w.got, !w.got
	case <-t.C:
	case <-ctx.Done():
	}
	return leave(w), false
}

// keyTurns bounds the connections one client key holds, so that one key
// (an allow=read one, say) cannot take every slot of -max-conns: at most
// -max-conns-per-key are served at once, and up to three times as many
// more wait their turn without being read (an honest burst from one
// client), like idle connections.
type keyTurns struct {
	mu    sync.Mutex // guards lines
	lines map[string]*turnLine
}

// errKeyFull refuses a connection of a key that already holds its share.
var errKeyFull = errors.New("too many connections with this key")

// take gives key a turn now, a place in its queue, or errKeyFull.
func (k *keyTurns) take(key string, limit int) (*waiter, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lines == nil {
		k.lines = map[string]*turnLine{}
	}
	l := k.lines[key]
	if l == nil {
		l = &turnLine{}
		k.lines[key] = l
	}
	w, ok := l.take(limit, 3*limit)
	if !ok {
		return nil, errKeyFull
	}
	return w, nil
}

// give ends a turn of key.
func (k *keyTurns) give(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l := k.lines[key]
	l.give()
	if l.idle() {
		delete(k.lines, key)
	}
}

// leave takes w, which gave up waiting, out of key's queue, reporting
// whether its turn had come meanwhile.
func (k *keyTurns) leave(key string, w *waiter) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if w.got {
		return true
	}
	if l := k.lines[key]; l != nil {
		l.leave(w)
		if l.idle() {
			delete(k.lines, key)
		}
	}
	return false
}
