package main

// jobs_client.go: the client commands for jobs: exec (run a script and stream its
// output, like "ssh host cmd"), jobs (list) and job (show or follow one).

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes of exec (and job -follow) that are not the script's own.
const (
	exitTimedOut  = 124 // as timeout(1)
	exitCancelled = 130 // as a shell reports a command stopped by Ctrl-C
	exitNoJob     = 255 // as ssh: the job could not be run or followed
)

// execReconnectFor bounds how long exec and job -follow keep trying to
// reconnect after the connection drops.
var execReconnectFor = time.Minute

// followWait is the wait_ms of exec's long polls; the agent clamps it.
const followWait = 30 * time.Second

const usageExec = `
Usage:
  tentacle exec [-home DIR] [-pin THUMBPRINT] [-proxy URL] [-shell S] [-timeout D]
                [-isolation none|full] [-mutex M] [-env K=V]... [-cwd DIR]
                [-file PATH|-] [-parallel N] [-group] [-json] TARGET -- COMMAND...

Runs COMMAND on the agent at TARGET as a job, streams its stdout to stdout
and its stderr to stderr as it runs, completes the job and exits with the
script's exit code, like "ssh host cmd": the words after "--" are joined
with spaces into one command line for the shell, so
"tentacle exec web1 -- ls -la /srv" runs "ls -la /srv" (quote what the
remote shell should see as one word, as with ssh). With -file the script is
read from PATH (- for stdin) and every word after "--" is an argument ($1,
$2, …) of it, passed as it is.

Ctrl-C cancels the job on the agent (its whole process tree is stopped); a
second Ctrl-C stops waiting and leaves the job to the agent. If the
connection drops, exec reconnects for up to a minute and carries on after
the last line it printed: no line is lost or shown twice. The agent's own
remarks (waiting for a mutex, cancel, timeout) go to stderr after
"tentacle: ".

Exit codes: the script's own (0-255); 124 the job timed out; 130 it was
cancelled; 255 the job could not be started or followed (agent
unreachable, job lost in an agent restart); 2 a usage error.

Example:
  tentacle exec -pin 5B01…9A web1 -- 'uname -a; df -h /'
  tentacle exec -pin 5B01…9A web1 -- ls -la /srv
  tentacle exec -pin 5B01…9A -file deploy-check.sh web1 -- "two words" 3
  tentacle exec -pin 5B01…9A -timeout 10m -isolation full web1 -- 'apt-get -y upgrade'
  tentacle exec -pin 5B01…9A -shell bash -file migrate.sh web1 -- production
`

// envList is a repeatable -env K=V flag.
type envList map[string]string

func (e envList) String() string { return "" }

func (e envList) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want NAME=VALUE, not %q", s)
	}
	e[k] = v
	return nil
}

// splitDashDash splits args at the first "--": the words before are flags
// and TARGET, the words after are the script and its arguments.
func splitDashDash(args []string) (before, after []string, found bool) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:], true
		}
	}
	return args, nil, false
}

func cmdExec(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("exec", usageExec, stdout, stderr)
	fs := c.fs
	shell := fs.String("shell", "", "interpreter: sh (default), bash, pwsh, or an absolute `path`")
	timeout := fs.Duration("timeout", 0, "stop the job after this `duration` (default none)")
	isolation := fs.String("isolation", "none", "none, or full: run alone within the mutex")
	mutex := fs.String("mutex", "", "the isolation mutex's `name` (default \"default\")")
	env := envList{}
	fs.Var(env, "env", "set `NAME=VALUE` in the script's environment (repeatable)")
	cwd := fs.String("cwd", "", "run in this absolute `dir`ectory on the agent (default: the job's own fresh work folder)")
	file := fs.String("file", "", "read the script from `path` (- for stdin)")
	flagArgs, words, dashed := splitDashDash(args)
	if code, ok := c.parse(flagArgs, 1, -1); !ok {
		return code
	}
	if dashed && len(c.args) > 1 {
		return c.usage("%q before \"--\": the command goes after it (TARGET -- COMMAND)", c.args[1])
	}
	switch {
	case *isolation != "none" && *isolation != "full":
		return c.usage("-isolation must be none or full, not %q", *isolation)
	case *timeout < 0:
		return c.usage("-timeout must not be negative")
	}
	script, scriptArgs, code, ok := c.execScript(*file, append(c.args[1:], words...))
	if !ok {
		return code
	}
	params := map[string]any{"script": script}
	for k, v := range map[string]string{"shell": *shell, "cwd": *cwd, "mutex": *mutex} {
		if v != "" {
			params[k] = v
		}
	}
	if len(scriptArgs) > 0 {
		params["args"] = scriptArgs
	}
	if len(env) > 0 {
		params["env"] = map[string]string(env)
	}
	if *timeout > 0 {
		params["timeout_s"] = timeout.Seconds()
	}
	if *isolation == "full" {
		params["isolation"] = "full"
	}
	if c.fan != nil {
		return c.fanExec(params)
	}
	return c.execJob(c.args[0], params)
}

// execScript is exec's script and its arguments: the file's text with the
// words as $1, $2, …, or else (as ssh does) the words joined into one
// command line for the remote shell. ok false means: exit with code, the
// reason printed.
func (c *clientCmd) execScript(file string, words []string) (script string, args []string, code int, ok bool) {
	var b []byte
	var err error
	switch {
	case file == "-":
		if b, err = io.ReadAll(os.Stdin); err != nil {
			fmt.Fprintf(c.stderr, "tentacle exec: failed to read the script from stdin: %v\n", err)
			return "", nil, 1, false
		}
	case file != "":
		if b, err = os.ReadFile(file); err != nil {
			fmt.Fprintf(c.stderr, "tentacle exec: failed to read the script: %v\n", err)
			return "", nil, 1, false
		}
	case len(words) == 0:
		return "", nil, c.usage("no script: give one after \"--\" (TARGET -- COMMAND) or with -file"), false
	default:
		return strings.Join(words, " "), nil, 0, true
	}
	return string(b), words, 0, true
}

// execJob starts a script job on the agent at addr, streams its output,
// completes it and returns exec's exit code.
func (c *clientCmd) execJob(addr string, params map[string]any) int {
	f := c.follower(addr)
	cc := c.dial(f.addr)
	if cc == nil {
		return exitNoJob
	}
	f.setConn(cc)
	defer f.close()
	if _, err := f.start("script.start", params); err != nil {
		c.fail(err)
		return exitNoJob
	}
	st, code, ok := f.finish()
	if !ok {
		return code
	}
	code, msg := jobExitCode(st)
	if msg != "" {
		fmt.Fprintf(f.stderr, "tentacle exec: job %s %s\n", f.ticket, msg)
	}
	f.flush()
	return code
}

// jobExitCode maps a finished job to exec's exit code, and a remark when it
// did not simply run to its end.
func jobExitCode(st *statusReply) (int, string) {
	outcome := ""
	if st.Outcome != nil {
		outcome = *st.Outcome
	}
	switch outcome {
	case outcomeSuccess:
		return 0, ""
	case outcomeFailed:
		if st.ExitCode != nil && *st.ExitCode > 0 && *st.ExitCode <= 255 {
			return *st.ExitCode, ""
		}
		if st.LogError != "" {
			return 1, "failed: its output could not all be written on the agent: " + st.LogError
		}
		return 1, "failed"
	case outcomeTimedOut:
		return exitTimedOut, "timed out"
	case outcomeCancelled:
		return exitCancelled, "was cancelled"
	case outcomeLost:
		return exitNoJob, "was lost: the agent stopped while it ran, so its outcome is unknown"
	}
	return exitNoJob, fmt.Sprintf("ended with unknown outcome %q", outcome)
}

const usageJobs = `
Usage:
  tentacle jobs [-home DIR] [-pin THUMBPRINT] [-proxy URL] [-json] TARGET

Lists the agent's jobs, oldest first: running, queued, and finished ones
nobody has completed yet (they are removed after the agent's retention
period). With -json, one JSON object a line (job.list's items), for
scripts.

Example:
  tentacle jobs -pin 5B01…9A web1
  tentacle jobs -pin 5B01…9A -json web1 | jq -r 'select(.state=="running") | .ticket'
`

func cmdJobs(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("jobs", usageJobs, stdout, stderr)
	asJSON := c.fs.Bool("json", false, "print one JSON object a line instead of a table")
	if code, ok := c.parse(args, 1, 1); !ok {
		return code
	}
	if c.fan != nil {
		return c.fanJobs()
	}
	cc := c.dial(c.args[0])
	if cc == nil {
		return 1
	}
	defer cc.Close()
	var r jobsReply
	if err := cc.call("job.list", nil, &r); err != nil {
		return c.fail(err)
	}
	if *asJSON {
		return printJSONLines(stdout, r.Jobs)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TICKET\tKIND\tSTATE\tOUTCOME\tSTARTED")
	for _, j := range r.Jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.Ticket, j.Kind, j.State, orDash(j.Outcome), orDash(j.Started))
	}
	tw.Flush()
	return 0
}

// printJSONLines prints each item as one line of JSON (for -json).
func printJSONLines[T any](w io.Writer, items []T) int {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, it := range items {
		enc.Encode(it)
	}
	return 0
}

// countTrue counts the flags that are set.
func countTrue(flags ...bool) int {
	n := 0
	for _, f := range flags {
		if f {
			n++
		}
	}
	return n
}

func orDash(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

const usageJob = `
Usage:
  tentacle job [-home DIR] [-pin THUMBPRINT] [-proxy URL] [-follow|-cancel|-complete] ADDR TICKET

Shows one job: its state, outcome, exit code, times, a deploy's result, and
its whole log, one line an entry (time, stream, text). With -follow it
instead streams the log as exec does (stdout to stdout, stderr to stderr)
until the job ends, reconnecting if the connection drops, and exits with
exec's exit codes; it never completes the job. -cancel cancels the job (a
queued one never starts; a running one's processes are stopped) and shows
it; -complete tells the agent the job's output has been read, so it removes
the job and its work folder (a running job cannot be completed: cancel it
first), and shows what was left of its log.

Example:
  tentacle job -pin 5B01…9A web1 3f9c0a7e5d2b1c84
  tentacle job -pin 5B01…9A -follow web1 3f9c0a7e5d2b1c84
  tentacle job -pin 5B01…9A -cancel web1 3f9c0a7e5d2b1c84
`

func cmdJob(args []string, stdout, stderr io.Writer) int {
	c := newClientCmd("job", usageJob, stdout, stderr)
	followFlag := c.fs.Bool("follow", false, "stream the log until the job ends, and exit with its exit code")
	cancelFlag := c.fs.Bool("cancel", false, "cancel the job, then show it")
	completeFlag := c.fs.Bool("complete", false, "complete the job (the agent forgets it), showing the rest of its log")
	if code, ok := c.parse(args, 2, 2); !ok {
		return code
	}
	if n := countTrue(*followFlag, *cancelFlag, *completeFlag); n > 1 {
		return c.usage("-follow, -cancel and -complete go one at a time")
	}
	f := c.follower(c.args[0])
	f.ticket = c.args[1]
	cc := c.dial(f.addr)
	if cc == nil {
		return 1
	}
	f.setConn(cc)
	defer f.close()
	if *followFlag {
		st, err := f.follow()
		if err != nil {
			return f.failed(err)
		}
		code, msg := jobExitCode(st)
		if msg != "" {
			fmt.Fprintf(f.stderr, "tentacle job: job %s %s\n", f.ticket, msg)
		}
		f.flush()
		return code
	}
	var st statusReply
	var logs []logEntry
	if *cancelFlag {
		if err := cc.call("job.cancel", map[string]any{"ticket": f.ticket}, nil); err != nil {
			return c.fail(err)
		}
		fmt.Fprintf(stderr, "tentacle job: cancelled job %s\n", f.ticket)
	}
	for method := "job.status"; ; {
		var page statusReply
		if err := cc.call(method, map[string]any{"ticket": f.ticket, "after": f.after}, &page); err != nil {
			return c.fail(err)
		}
		st = page
		logs = append(logs, page.Logs...)
		if page.Next > f.after {
			f.after = page.Next
		}
		if method == "job.complete" {
			break
		}
		if len(page.Logs) == 0 {
			if !*completeFlag {
				break
			}
			// Every line read: complete it now (the agent then forgets it).
			method = "job.complete"
		}
	}
	w := f.stdout
	fmt.Fprintf(w, "ticket:    %s\nkind:      %s\nstate:     %s\noutcome:   %s\n", st.Ticket, st.Kind, st.State, orDash(st.Outcome))
	ec := "-"
	if st.ExitCode != nil {
		ec = fmt.Sprint(*st.ExitCode)
	}
	fmt.Fprintf(w, "exit code: %s\nstarted:   %s\nfinished:  %s\n", ec, orDash(st.Started), orDash(st.Finished))
	if len(st.Result) > 0 && string(st.Result) != "null" {
		fmt.Fprintf(w, "result:    %s\n", st.Result)
	}
	fmt.Fprintf(w, "log:       %s\n", countOf(len(logs), "line"))
	for _, e := range logs {
		fmt.Fprintf(w, "%s %-6s %s\n", e.Time, e.Stream, e.Text)
	}
	f.flush()
	return 0
}
