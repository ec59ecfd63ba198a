package main

// fleet_deploy.go: rolling deploys (FLEET §5), and releases and rollback in
// fan-out mode. A rollout pushes the package to every agent first, then
// deploys in batches, stops starting batches once more than -max-failures
// agents have failed (the rest are skipped), and with -rollback-on-failure
// puts the agents it deployed to back on the release they had. Each agent
// already keeps its previous release current when its own deploy fails;
// the summary says, per agent, what is current now.

import (
	"cmp"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
)

// rolloutAgent is what a rollout knows of one agent.
type rolloutAgent struct {
	before   string // the release current before the rollout ("" none)
	now      string // current now, as last seen
	known    bool   // now is known (the agent answered last time)
	pushed   bool
	deployed string // the release this rollout deployed, "" if none
	rolled   string // "" or what the rollback did
}

// currentRelease asks the agent which release of app is current ("" none).
func currentRelease(cc *clientConn, app string) (string, error) {
	var l struct {
		Current *string `json:"current"`
	}
	err := callOn(cc, "deploy.list", map[string]string{"app": app}, &l)
	if rpcKindOf(err) == kindNotFound { // the app has never been deployed there
		return "", nil
	}
	if err != nil || l.Current == nil {
		return "", err
	}
	return *l.Current, nil
}

func releaseOrNone(r string) string { return cmp.Or(r, "(none)") }

// fanDeploy is a rolling deploy of the package file as app version to the
// selected agents; params are deploy.start's but for the package.
func (c *clientCmd) fanDeploy(app, version, file string, params map[string]any) int {
	f := newFanOut(c)
	if f == nil {
		return 1
	}
	pf, fi, sha := c.openHashed(file)
	if pf == nil {
		return 1
	}
	defer pf.Close()
	params["package"] = sha
	n := len(f.agents)
	batch, _ := parseBatch(f.ff.batch, n)
	st := make([]rolloutAgent, n)
	var failures atomic.Int64
	f.hold = true // each agent's -json end comes last, when rollbacks are known
	label := fmt.Sprintf("deploy %s %s", app, version)
	f.out.setPhase(label, "pushing", n)
	defer f.out.runProgress()()
	defer f.handleInterrupt()()

	// 1. The package goes to every agent first.
	f.each(f.all(), nil, func(i int, a *agentEntry, w *agentOut) agentResult {
		cc, fail := f.connect(a)
		if fail != nil {
			failures.Add(1)
			return *fail
		}
		defer cc.Close()
		before, err := currentRelease(cc, app)
		if err != nil {
			failures.Add(1)
			return callFailed("deploy.list", err)
		}
		st[i].before, st[i].now, st[i].known = before, before, true
		if _, err := f.pushTo(a, cc, pf, fi.Size(), sha); err != nil {
			failures.Add(1)
			r := callFailed("push", err)
			r.outcome = outFailed
			return r
		}
		st[i].pushed = true
		return agentResult{outcome: outOK}
	})

	// 2. Then the deploys, a batch at a time, while failures allow.
	var ready []int
	for i := range st {
		if st[i].pushed {
			ready = append(ready, i)
		}
	}
	batches := (len(ready) + batch - 1) / batch
	tooMany := func() bool { return failures.Load() > int64(f.ff.maxFailures) }
	skip := func() *agentResult {
		if !tooMany() {
			return nil
		}
		return &agentResult{outcome: outSkipped, detail: fmt.Sprintf("not started: %s failed, more than -max-failures %d", countOf(int(failures.Load()), "agent"), f.ff.maxFailures)}
	}
	f.out.setPhase(label, "", len(ready))
	for b := 0; b < batches; b++ {
		f.out.setPhase(label, fmt.Sprintf("batch %d/%d", b+1, batches), 0)
		f.each(ready[b*batch:min((b+1)*batch, len(ready))], skip, func(i int, a *agentEntry, w *agentOut) agentResult {
			r := f.deployOne(a, w, app, version, params, &st[i])
			if r.outcome != outOK {
				failures.Add(1)
			}
			return r
		})
	}

	// 3. Put back the agents this rollout moved, if it stopped for failures.
	if f.ff.rollback && tooMany() {
		var moved []int
		for i := range st {
			if st[i].deployed != "" {
				moved = append(moved, i)
			}
		}
		f.out.setPhase(label, "rolling back", len(moved))
		f.each(moved, nil, func(i int, a *agentEntry, w *agentOut) agentResult {
			r := f.results[i]
			if !f.rollbackOne(a, w, app, &st[i]) {
				r.outcome = outFailed // left on the new release: not where the fleet was asked to end
			}
			return r
		})
	}
	f.out.stopProgress()
	for i := range st {
		f.results[i].detail = rolloutDetail(f.results[i], st[i])
		f.results[i].fields = map[string]any{"release": strPtr(st[i].deployed), "current": strPtr(st[i].now), "previous": strPtr(st[i].before), "rolled_back": st[i].rolled == "rolled back"}
		if !st[i].known {
			f.results[i].fields["current"] = nil
		}
		if f.out.json {
			f.out.write(false, f.out.endEvent(f.agents[i], f.results[i]))
		}
	}
	return f.finish(failures.Load() > 0)
}

// deployOne deploys on one agent and follows its log.
func (f *fanOut) deployOne(a *agentEntry, w *agentOut, app, version string, params map[string]any, st *rolloutAgent) agentResult {
	job, fail := f.runJob(a, w, "deploy.start", params)
	if fail != nil {
		st.known = false
		return *fail
	}
	var res struct {
		Release string  `json:"release"`
		Current *string `json:"current"`
		Phase   string  `json:"phase"`
		Error   string  `json:"error"`
	}
	json.Unmarshal(job.Result, &res)
	if res.Current != nil {
		st.now = *res.Current
	} else {
		st.now = ""
	}
	switch outcome := orDash(job.Outcome); outcome {
	case outcomeSuccess:
		st.deployed = res.Release
		w.say("deployed %s %s as release %s: current -> %s", app, version, res.Release, releaseOrNone(st.now))
		return agentResult{outcome: outOK}
	case outcomeFailed:
		return agentResult{outcome: outFailed, detail: fmt.Sprintf("failed at %s: %s", cmp.Or(res.Phase, "an unknown point"), cmp.Or(res.Error, "no reason given"))}
	case outcomeTimedOut:
		return agentResult{outcome: outTimeout, detail: "timed out at " + cmp.Or(res.Phase, "an unknown point")}
	case outcomeCancelled:
		return agentResult{outcome: outCancelled, detail: "cancelled at " + cmp.Or(res.Phase, "an unknown point")}
	default:
		return agentResult{outcome: outFailed, detail: strings.ReplaceAll(outcome, "_", " ")}
	}
}

// rollbackOne points app on a back at the release it had before. It
// reports false when the agent could not be put back.
func (f *fanOut) rollbackOne(a *agentEntry, w *agentOut, app string, st *rolloutAgent) bool {
	if st.before == "" {
		st.rolled = "not rolled back: it had no release before"
		return true
	}
	cc, fail := f.connect(a)
	if fail != nil {
		st.rolled, st.known = "rollback failed: "+fail.detail, false
		return false
	}
	defer cc.Close()
	var r struct {
		Current string `json:"current"`
	}
	if err := callOn(cc, "deploy.rollback", map[string]string{"app": app, "to": st.before}, &r); err != nil {
		st.rolled = "rollback failed: " + callFailed("deploy.rollback", err).detail
		return false
	}
	st.now, st.rolled = r.Current, "rolled back"
	w.say("rolled back %s: current -> %s (was %s)", app, r.Current, st.deployed)
	return true
}

// rolloutDetail is an agent's summary words: what happened and what is
// current now.
func rolloutDetail(r agentResult, st rolloutAgent) string {
	var parts []string
	if r.detail != "" {
		parts = append(parts, r.detail)
	}
	switch {
	case st.rolled == "rolled back":
		parts = append(parts, fmt.Sprintf("deployed %s, then rolled back: current %s", st.deployed, releaseOrNone(st.now)))
	case st.rolled != "":
		parts = append(parts, fmt.Sprintf("deployed %s, %s: current %s", st.deployed, st.rolled, releaseOrNone(st.now)))
	case st.known:
		parts = append(parts, "current "+releaseOrNone(st.now))
	case st.before != "" || st.pushed:
		parts = append(parts, fmt.Sprintf("current unknown (it was %s before)", releaseOrNone(st.before)))
	default:
		parts = append(parts, "current unknown")
	}
	return strings.Join(parts, "; ")
}

// fanReleases lists app's releases (or every app's current) on every
// selected agent, in one table with an AGENT column.
func (c *clientCmd) fanReleases(app string) int {
	if app == "" {
		return c.onEach("AGENT\tAPP\tCURRENT", func(x *onAgent) agentResult {
			var r appsReply
			if err := callOn(x.cc, "deploy.list", nil, &r); err != nil {
				return callFailed("deploy.list", err)
			}
			for _, a := range r.Apps {
				x.row(a.App, orDash(a.Current))
			}
			return agentResult{outcome: outOK, fields: map[string]any{"apps": r.Apps}}
		})
	}
	return c.onEach("AGENT\t\tRELEASE\tVERSION\tDEPLOYED\tOUTCOME\tPACKAGE", func(x *onAgent) agentResult {
		var r releasesReply
		if err := callOn(x.cc, "deploy.list", map[string]string{"app": app}, &r); err != nil {
			return callFailed("deploy.list", err)
		}
		for _, rel := range r.Releases {
			mark := ""
			if rel.Current {
				mark = "*"
			}
			x.row(mark, rel.Release, rel.Version, rel.Deployed, rel.Outcome, shortSHA(rel.Package))
		}
		return agentResult{outcome: outOK, fields: map[string]any{"app": app, "current": r.Current, "releases": r.Releases}}
	})
}

// fanRollback points app back on every selected agent.
func (c *clientCmd) fanRollback(app, to string) int {
	params := map[string]string{"app": app}
	if to != "" {
		params["to"] = to
	}
	return c.onEach("", func(x *onAgent) agentResult {
		var r struct {
			Current  string  `json:"current"`
			Previous *string `json:"previous"`
		}
		if err := callOn(x.cc, "deploy.rollback", params, &r); err != nil {
			res := callFailed("deploy.rollback", err)
			if cur, cerr := currentRelease(x.cc, app); cerr == nil {
				res.detail += "; current " + releaseOrNone(cur)
			}
			return res
		}
		prev := ""
		if r.Previous != nil {
			prev = *r.Previous
		}
		x.say("%s: current -> %s (was %s)", app, r.Current, releaseOrNone(prev))
		return agentResult{outcome: outOK, fields: map[string]any{"current": r.Current, "previous": r.Previous}}
	})
}
