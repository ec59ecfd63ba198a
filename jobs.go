package main

// jobs.go: scripts and deploys run as jobs (PROTOCOL §5 "Jobs").
// STUB: to be built by the jobs issue.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
)

// jobManager runs and remembers jobs.
type jobManager struct{}

func newJobManager(cfg *config, log *slog.Logger) (*jobManager, error) { return &jobManager{}, nil }

// shutdown waits for running jobs until ctx is done, then kills them.
func (m *jobManager) shutdown(ctx context.Context) {}

// availableShells lists the shells script.start accepts that are installed.
func availableShells() []string {
	var out []string
	for _, s := range []string{"sh", "bash", "pwsh"} {
		if _, err := exec.LookPath(s); err == nil {
			out = append(out, s)
		}
	}
	return out
}

func cmdExec(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "exec") }
func cmdJobs(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "jobs") }
func cmdJob(args []string, stdout, stderr io.Writer) int  { return notYet(stderr, "job") }

func notYet(stderr io.Writer, name string) int {
	fmt.Fprintf(stderr, "tentacle %s: not implemented yet\n", name)
	return 1
}
