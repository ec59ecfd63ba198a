package main

// main.go: the command line: the table of commands, run (which main only
// exits with), help and usage texts, flag parsing with its one-line
// errors and suggestions, and the version. doc.go is the map of the rest.

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=…".
var version string

// commit may be set with -ldflags "-X main.commit=…" where the build has no
// .git to stamp from (a Docker build context); else Go's VCS stamp is used.
var commit string

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands in the order help lists them.
var commands []command

func init() {
	commands = []command{
		{"run", "run the agent", cmdRun},
		{"new-certificate", "make the agent's identity (key and certificate)", cmdNewCertificate},
		{"show-thumbprint", "print this home's thumbprint", cmdShowThumbprint},
		{"trust", "add, remove or list trusted servers", cmdTrust},
		{"agents", "name agents, learn their pins, show their status", cmdAgents},
		{"call", "send one request to an agent and print the result", cmdCall},
		{"exec", "run a script on an agent, streaming its output", cmdExec},
		{"jobs", "list an agent's jobs", cmdJobs},
		{"job", "show (and follow) one job", cmdJob},
		{"upload", "send a file to an agent", cmdUpload},
		{"download", "fetch a file from an agent", cmdDownload},
		{"push", "put a package in an agent's cache", cmdPush},
		{"deploy", "deploy a package to an agent as a release", cmdDeploy},
		{"releases", "list an app's releases", cmdReleases},
		{"rollback", "point an app back at an earlier release", cmdRollback},
		{"health", "check that the local agent answers", cmdHealth},
		{"service", "install or uninstall the agent as a systemd service", cmdService},
		{"audit", "show the audit log", cmdAudit},
		{"version", "print the version", cmdVersion},
		{"help", "show help for a command", cmdHelp},
	}
}

const usageMain = `tentacle is a listening deployment agent and its client.

Usage:
  tentacle COMMAND [FLAGS] [ARGS]

Commands:
%s
Run "tentacle help COMMAND" or "tentacle COMMAND -h" for a command's flags.

Example:
  tentacle run                      # start the agent on :10933
  tentacle trust add 3F2A…9C ci     # trust a server
  tentacle call -pin 5B01…9A agent.example:10933 ping
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program; main only exits with its code so that defers
// run first. Tests drive the CLI through it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printMainUsage(stderr)
		return 2
	}
	name := strings.TrimLeft(args[0], "-")
	if name == "h" || name == "help" && len(args) == 1 {
		printMainUsage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "tentacle: unknown command %q%s\nRun \"tentacle help\" for the commands.\n", args[0], didYouMean(name, commandNames()))
	return 2
}

// commandNames lists the commands, for suggestions.
func commandNames() []string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return names
}

// subcommand checks that args starts with one of a command's subcommands
// (ok). Otherwise it has answered: -h prints the usage to stdout (code 0);
// no subcommand prints it to stderr, and an unknown one gets one line
// naming it, with the closest and the choices (code 2).
func subcommand(name string, subs []string, usage string, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	switch {
	case len(args) > 0 && slices.Contains(subs, args[0]):
		return 0, true
	case len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		fmt.Fprint(stdout, strings.TrimLeft(usage, "\n"))
		return 0, false
	case len(args) == 0:
		fmt.Fprint(stderr, strings.TrimLeft(usage, "\n"))
		return 2, false
	}
	fmt.Fprintf(stderr, "tentacle %s: unknown subcommand %q%s: want %s\nRun \"tentacle %s -h\" for usage.\n",
		name, clip(args[0], maxLogString), didYouMean(args[0], subs), strings.Join(subs, ", "), name)
	return 2, false
}

// didYouMean is " (did you mean "X"?)" for the closest of names, or "".
func didYouMean(word string, names []string) string {
	if s := suggest(word, names); s != "" {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	return ""
}

// suggest returns the name closest to a mistyped word: within two edits
// (a typo, a swapped pair, a missing letter) or of which word is a prefix,
// else "".
func suggest(word string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		d := editDistance(word, n)
		if strings.HasPrefix(n, word) && len(word) >= 2 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance of a and b: edits,
// where swapping two neighbours counts as one, as typing errors do.
func editDistance(a, b string) int {
	prev2, prev, cur := make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

func printMainUsage(w io.Writer) {
	var b strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, usageMain, b.String())
}

func cmdHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printMainUsage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] && c.name != "help" {
			return c.run([]string{"-h"}, stdout, stdout)
		}
	}
	fmt.Fprintf(stderr, "tentacle help: unknown command %q%s\n", args[0], didYouMean(args[0], commandNames()))
	return 2
}

// newFlagSet makes a subcommand's FlagSet whose usage is the hand-written
// text followed by the flags.
func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tentacle "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), strings.TrimLeft(usage, "\n"))
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and checks the positional count in [min, max]
// (max < 0: no upper bound). A flag-like word among the positionals is a
// usage error: Go's flag package stops at the first positional, so
// "trust add X -home H" would otherwise take "-home" as a name. Words after
// a "--" are not checked. ok false means: return code.
func parseFlags(fs *flag.FlagSet, args []string, min, max int) (rest []string, code int, ok bool) {
	// The flag package would print its error above the whole usage text:
	// say what is wrong in one line instead, with a suggestion.
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return nil, 0, false
		}
		msg := err.Error()
		if name, found := strings.CutPrefix(msg, "flag provided but not defined: -"); found {
			var names []string
			fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
			if s := suggest(name, names); s != "" {
				msg += fmt.Sprintf(" (did you mean -%s?)", s)
			}
		}
		return usageError(fs, "%s", msg)
	}
	rest = fs.Args()
	dashdash := len(rest)
	for i, a := range args {
		if a == "--" && len(args)-i-1 <= len(rest) {
			dashdash = len(rest) - (len(args) - i - 1)
			break
		}
	}
	for _, a := range rest[:dashdash] {
		if len(a) > 1 && a[0] == '-' {
			return usageError(fs, "flag %q after the arguments: flags come first (%s [FLAGS] ARGS)", a, fs.Name())
		}
	}
	if len(rest) < min || (max >= 0 && len(rest) > max) {
		return usageError(fs, "wrong number of arguments")
	}
	return rest, 0, true
}

// usageError prints msg and a hint to stderr; the caller exits 2.
func usageError(fs *flag.FlagSet, format string, args ...any) ([]string, int, bool) {
	fmt.Fprintf(fs.Output(), "%s: %s\nRun \"%s -h\" for usage.\n", fs.Name(), fmt.Sprintf(format, args...), fs.Name())
	return nil, 2, false
}

const usageRun = `
Usage:
  tentacle run [-home DIR] [-listen ADDR] [FLAGS]

Runs the agent. On first start in an empty home it creates the identity and
prints its thumbprint and how to trust a server. Stops gracefully on SIGINT or
SIGTERM.

Example:
  tentacle run -home /var/lib/tentacle -listen :10933
`

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", usageRun, stderr)
	cfg := runFlags(fs)
	if _, code, ok := parseFlags(fs, args, 0, 0); !ok {
		return code
	}
	if err := cmp.Or(checkEnvDefaults(fs), cfg.check()); err != nil {
		fmt.Fprintf(stderr, "tentacle run: %v\n", err)
		return 2
	}
	if err := runAgent(cfg, stderr, nil); err != nil {
		fmt.Fprintf(stderr, "tentacle run: %v\n", err)
		return 1
	}
	return 0
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "\nUsage:\n  tentacle version\n\nPrints the version, Go version, commit and platform.\n\nExample:\n  tentacle version\n", stderr)
	if _, code, ok := parseFlags(fs, args, 0, 0); !ok {
		return code
	}
	fmt.Fprintf(stdout, "tentacle %s (%s, commit %s, %s/%s)\n", versionString(), runtime.Version(), commitString(), runtime.GOOS, runtime.GOARCH)
	return 0
}

// versionString is the -X version, else the module version, else "devel".
func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// commitString is the VCS revision Go stamped into the build, if any.
func commitString() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", ""
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	return rev + dirty
}
