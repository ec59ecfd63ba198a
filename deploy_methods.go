package main

// deploy_methods.go: the deploy methods' handlers (deploy.start,
// deploy.list, deploy.rollback): checking params and answering; the work is
// in deploy.go and deploy_run.go.

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// checkName refuses an app or version name outside PROTOCOL §5's shape.
func checkName(field, s string) error {
	if !validName(s) || !filepath.IsLocal(s) {
		return errorf(kindInvalidParams, "%s %q: want 1 to 64 of A-Z a-z 0-9 . _ -, not starting with \".\"", field, s)
	}
	return nil
}

func handleDeployStart(c *call) (any, error) {
	var p struct {
		App       string            `json:"app,required"`
		Version   string            `json:"version,required"`
		Package   string            `json:"package,required"`
		Format    string            `json:"format"`
		Variables map[string]string `json:"variables"`
		Retain    *int              `json:"retain"`
		TimeoutS  float64           `json:"timeout_s"`
		Shell     string            `json:"shell"`
		Ticket    string            `json:"ticket"`
	}
	origin, err := c.decodeStart(&p, &p.Ticket)
	if err != nil {
		return nil, err
	}
	if err := checkName("app", p.App); err != nil {
		return nil, err
	}
	if err := checkName("version", p.Version); err != nil {
		return nil, err
	}
	if p.Version == "current" || p.Version == "shared" {
		return nil, errorf(kindInvalidParams, "version %q is reserved (it names the app's %s folder)", p.Version, p.Version)
	}
	switch p.Format {
	case "", formatZip, formatTar, formatTarGz, formatTarBz2:
	default:
		return nil, errorf(kindInvalidParams, "format %q: want zip, tar, tar.gz or tar.bz2 (or leave it out to recognise it)", p.Format)
	}
	names := make([]string, 0, len(p.Variables))
	for k, v := range p.Variables {
		if !validVarName(k) || strings.HasPrefix(k, "TENTACLE_") || strings.ContainsRune(v, 0) {
			return nil, errorf(kindInvalidParams, "variable %q: names are [A-Za-z_][A-Za-z0-9_]* and not TENTACLE_*, values hold no NUL", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	retain := 5
	if p.Retain != nil {
		if retain = *p.Retain; retain < 1 {
			return nil, errorf(kindInvalidParams, "retain must be at least 1 (the new release), not %d", retain)
		}
	}
	if !(p.TimeoutS >= 0 && p.TimeoutS <= 1e9) {
		return nil, errorf(kindInvalidParams, "timeout_s must be a number of seconds from 0 (none) to 1e9, not %v", p.TimeoutS)
	}
	interp, ext, err := resolveShell(p.Shell)
	if err != nil {
		return nil, err
	}
	if ext == "" {
		ext = ".sh"
	}
	sha := strings.ToLower(p.Package)
	if len(sha) != 64 || strings.Trim(sha, "0123456789abcdef") != "" {
		return nil, errorf(kindInvalidParams, "package %q: want a SHA-256 in hex", p.Package)
	}
	// Audit the request's shape: variable names, never their values.
	c.audit = map[string]any{"app": p.App, "version": p.Version, "package": sha, "format": p.Format,
		"retain": retain, "timeout_s": p.TimeoutS, "shell": p.Shell, "variables": names}
	spec := deploySpec{app: p.App, version: p.Version, sha: sha, format: p.Format, vars: p.Variables,
		retain: retain, interp: interp, ext: ext, origin: origin}
	j, fresh, err := c.srv.apps.start(spec, time.Duration(p.TimeoutS*float64(time.Second)))
	if err != nil {
		return nil, err
	}
	c.audit["ticket"] = j.ticket()
	return startAnswer(j, fresh), nil
}

// releaseInfo is one release as deploy.list shows it.
type releaseInfo struct {
	Release  string `json:"release"`
	Version  string `json:"version"`
	Deployed string `json:"deployed"`
	Outcome  string `json:"outcome"`
	Package  string `json:"package"`
	Current  bool   `json:"current"`
}

// appInfo is one app as deploy.list without app shows it.
type appInfo struct {
	App     string  `json:"app"`
	Current *string `json:"current"`
}

// appsReply is deploy.list's answer without an app, releasesReply with
// one: the agent encodes them and the client decodes them.
type appsReply struct {
	Apps []appInfo `json:"apps"`
}

type releasesReply struct {
	App      string        `json:"app"`
	Current  *string       `json:"current"`
	Releases []releaseInfo `json:"releases"`
}

func handleDeployList(c *call) (any, error) {
	var p struct {
		App string `json:"app"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	d := c.srv.apps
	if p.App == "" {
		apps := []appInfo{}
		des, err := os.ReadDir(d.cfg.appsDir())
		if err != nil {
			return nil, ioError(err)
		}
		for _, de := range des {
			if de.IsDir() && validName(de.Name()) {
				apps = append(apps, appInfo{App: de.Name(), Current: strPtr(readCurrent(d.appDir(de.Name())))})
			}
		}
		return appsReply{Apps: apps}, nil
	}
	if err := checkName("app", p.App); err != nil {
		return nil, err
	}
	meta, cur, err := d.releases(p.App)
	if err != nil {
		return nil, err
	}
	rels := []releaseInfo{}
	for _, r := range meta.Releases {
		rels = append(rels, releaseInfo{Release: r.Release, Version: r.Version, Deployed: r.Deployed.UTC().Format(time.RFC3339),
			Outcome: r.Outcome, Package: r.Package, Current: r.Release == cur})
	}
	return releasesReply{App: p.App, Current: strPtr(cur), Releases: rels}, nil
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func handleDeployRollback(c *call) (any, error) {
	var p struct {
		App string `json:"app,required"`
		To  string `json:"to"`
	}
	if err := decodeParams(c.params, &p); err != nil {
		return nil, err
	}
	if err := checkName("app", p.App); err != nil {
		return nil, err
	}
	c.audit = map[string]any{"app": p.App, "to": p.To}
	to, cur, err := c.srv.apps.rollback(p.App, p.To)
	if err != nil {
		return nil, err
	}
	c.audit["to"], c.audit["previous"] = to, cur
	return map[string]any{"app": p.App, "current": to, "previous": strPtr(cur)}, nil
}
