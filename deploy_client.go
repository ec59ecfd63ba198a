package main

// deploy_client.go: the deploy, releases and rollback commands.

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

const usageDeploy = `
Usage:
  tentacle deploy [-home DIR] [-pin THUMBPRINT] [-proxy URL] [-var NAME=VALUE]...
                  [-retain N] [-timeout D] [-shell S] [-format F]
                  [-batch N|P%] [-max-failures K] [-rollback-on-failure]
                  TARGET APP VERSION PACKAGE-FILE

Deploys PACKAGE-FILE (zip, tar, tar.gz or tar.bz2) as release VERSION of
APP on the agent at TARGET: the package goes into the agent's cache first (not sent again
if it is there, resumed if a push was cut), then the agent extracts it into
<home>/apps/APP/VERSION, runs the package's PreDeploy.sh and Deploy.sh,
points <home>/apps/APP/current at it, and runs PostDeploy.sh. The deploy's
log is printed as it runs. On any failure current stays at the previous
release and DeployFailed.sh runs.

Exit code: 0 when deployed; 1 when it failed (the failing phase is named);
124 on timeout; 130 when cancelled (Ctrl-C cancels the deploy); 255 when it
could not be started or followed.

Example:
  tentacle deploy -pin 5B01…9A -var DB_HOST=db1 web1 shop 1.4.0 shop-1.4.0.tar.gz
`

const usageReleases = `
Usage:
  tentacle releases [-home DIR] [-pin THUMBPRINT] [-proxy URL] [-json] TARGET [APP]

Lists APP's releases on the agent at TARGET, oldest first, "*" marking
current; without APP, lists the apps and their current release. With
-json, one JSON object a line (deploy.list's items), for scripts.

Example:
  tentacle releases -pin 5B01…9A web1 shop
  tentacle releases -pin 5B01…9A -json web1 shop | jq -r 'select(.outcome=="success") | .release'
`

const usageRollback = `
Usage:
  tentacle rollback [-home DIR] [-pin THUMBPRINT] [-proxy URL] TARGET APP [RELEASE]

Points APP's current at RELEASE (default: the newest successful release
before the current one), atomically. No script runs. A failed or missing
release is refused.

Example:
  tentacle rollback -pin 5B01…9A web1 shop
  tentacle rollback -pin 5B01…9A web1 shop 1.3.2
`

// varList collects -var NAME=VALUE flags.
type varList map[string]string

func (v varList) String() string { return "" }

func (v varList) Set(s string) error {
	k, val, ok := strings.Cut(s, "=")
	if !ok || !validVarName(k) {
		return fmt.Errorf("want NAME=VALUE with NAME of A-Z a-z 0-9 _, not %q", s)
	}
	v[k] = val
	return nil
}

func cmdDeploy(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("deploy", usageDeploy, stdout, stderr)
	fs := c.fs
	vars := varList{}
	fs.Var(vars, "var", "set `NAME=VALUE` in the scripts' environment (repeatable)")
	retain := fs.Int("retain", 5, "keep this many newest releases")
	timeout := fs.Duration("timeout", 0, "stop the deploy after this `duration` (default none)")
	shell := fs.String("shell", "", "interpreter for the package's scripts: sh (default), bash, pwsh, or an absolute `path`")
	format := fs.String("format", "", "the package's `format`: zip, tar or tar.gz (default: recognised from its bytes)")
	if code, ok := c.parse(args, 4, 4); !ok {
		return code
	}
	if *retain < 1 {
		return c.usage("-retain must be at least 1")
	}
	if *timeout < 0 {
		return c.usage("-timeout must not be negative")
	}
	addr, app, version, file := c.args[0], c.args[1], c.args[2], c.args[3]
	for _, n := range [][2]string{{"APP", app}, {"VERSION", version}} {
		if !validName(n[1]) {
			return c.usage("%s %q: want 1 to 64 of A-Z a-z 0-9 . _ -, not starting with \".\"", n[0], n[1])
		}
	}
	params := map[string]any{"app": app, "version": version, "retain": *retain}
	if len(vars) > 0 {
		params["variables"] = map[string]string(vars)
	}
	if *timeout > 0 {
		params["timeout_s"] = timeout.Seconds()
	}
	if *shell != "" {
		params["shell"] = *shell
	}
	if *format != "" {
		params["format"] = *format
	}
	if c.fan != nil {
		return c.fanDeploy(app, version, file, params)
	}
	cc := c.dial(addr)
	if cc == nil {
		return exitNoJob
	}
	f := c.follower(addr)
	f.setConn(cc)
	defer f.close()
	sha, err := pushPackage(cc, file, progressTo(stderr))
	if err != nil {
		c.fail(fmt.Errorf("failed to push %q: %w", file, err))
		return exitNoJob
	}
	params["package"] = sha
	state, err := f.start("deploy.start", params)
	if err != nil {
		c.fail(err)
		return exitNoJob
	}
	if state == stateQueued {
		fmt.Fprintf(stderr, "tentacle deploy: job %s queued behind another deploy of %s\n", f.ticket, app)
	}
	st, code, ok := f.finish()
	if !ok {
		return code
	}
	var res struct {
		Release string          `json:"release"`
		Current json.RawMessage `json:"current"` // absent when there is no result (a lost job)
		Phase   string          `json:"phase"`
		Error   string          `json:"error"`
	}
	json.Unmarshal(st.Result, &res)
	outcome := ""
	if st.Outcome != nil {
		outcome = *st.Outcome
	}
	cur := f.currentOf(app, res.Current)
	code = 0
	switch outcome {
	case outcomeSuccess:
		fmt.Fprintf(f.stdout, "deployed %s %s as release %s: current -> %s\n", app, version, res.Release, cur)
	case outcomeFailed:
		code = 1
		fmt.Fprintf(f.stderr, "tentacle deploy: %s %s failed%s; current is %s\n", app, version, atPhase(res.Phase, res.Error), cur)
	case outcomeLost:
		code, _ = jobExitCode(st)
		fmt.Fprintf(f.stderr, "tentacle deploy: %s %s lost: the agent stopped during the deploy; current is %s\n", app, version, cur)
	default:
		code, _ = jobExitCode(st)
		fmt.Fprintf(f.stderr, "tentacle deploy: %s %s %s%s; current is %s\n", app, version, strings.ReplaceAll(outcome, "_", " "), atPhase(res.Phase, ""), cur)
	}
	f.flush()
	return code
}

// atPhase says where a deploy failed, and why when told: " at PHASE: ERROR".
func atPhase(phase, why string) string {
	s := ""
	if phase != "" {
		s = " at " + phase
	}
	if why != "" {
		s += ": " + why
	}
	return s
}

// currentOf is the release current names, as the deploy's result says or,
// without a result, as the agent says now.
func (f *follower) currentOf(app string, res json.RawMessage) string {
	var cur *string
	if len(res) == 0 {
		var l struct {
			Current *string `json:"current"`
		}
		if err := f.call("deploy.list", map[string]string{"app": app}, &l); err != nil {
			return fmt.Sprintf("unknown (%v)", err)
		}
		cur = l.Current
	} else if json.Unmarshal(res, &cur) != nil {
		return "unknown"
	}
	if cur == nil {
		return "(none)"
	}
	return *cur
}

func cmdReleases(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("releases", usageReleases, stdout, stderr)
	asJSON := c.fs.Bool("json", false, "print one JSON object a line instead of a table")
	if code, ok := c.parse(args, 1, 2); !ok {
		return code
	}
	rest := c.args
	if c.fan != nil {
		return c.fanReleases(strings.Join(rest[1:], ""))
	}
	cc := c.dial(rest[0])
	if cc == nil {
		return 1
	}
	defer cc.Close()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if len(rest) == 1 {
		var r appsReply
		if err := cc.call("deploy.list", nil, &r); err != nil {
			return c.fail(err)
		}
		if *asJSON {
			return printJSONLines(stdout, r.Apps)
		}
		fmt.Fprintln(tw, "APP\tCURRENT")
		for _, a := range r.Apps {
			fmt.Fprintf(tw, "%s\t%s\n", a.App, orDash(a.Current))
		}
		return 0
	}
	var r releasesReply
	if err := cc.call("deploy.list", map[string]string{"app": rest[1]}, &r); err != nil {
		return c.fail(err)
	}
	if *asJSON {
		return printJSONLines(stdout, r.Releases)
	}
	fmt.Fprintln(tw, "\tRELEASE\tVERSION\tDEPLOYED\tOUTCOME\tPACKAGE")
	for _, rel := range r.Releases {
		mark := ""
		if rel.Current {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", mark, rel.Release, rel.Version, rel.Deployed, rel.Outcome, shortSHA(rel.Package))
	}
	return 0
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func cmdRollback(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("rollback", usageRollback, stdout, stderr)
	if code, ok := c.parse(args, 2, 3); !ok {
		return code
	}
	rest := c.args
	params := map[string]string{"app": rest[1]}
	if len(rest) == 3 {
		params["to"] = rest[2]
	}
	if c.fan != nil {
		return c.fanRollback(rest[1], params["to"])
	}
	cc := c.dial(rest[0])
	if cc == nil {
		return 1
	}
	defer cc.Close()
	var r struct {
		Current  string  `json:"current"`
		Previous *string `json:"previous"`
	}
	if err := cc.call("deploy.rollback", params, &r); err != nil {
		return c.fail(err)
	}
	prev := "(none)"
	if r.Previous != nil {
		prev = *r.Previous
	}
	fmt.Fprintf(stdout, "%s: current -> %s (was %s)\n", rest[1], r.Current, prev)
	return 0
}
