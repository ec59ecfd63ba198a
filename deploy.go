package main

// deploy.go: packages become releases (PROTOCOL §5 "Deploys").
// STUB: to be built by the deploys issue.

import (
	"io"
	"log/slog"
)

// deployManager deploys packages as releases of apps.
type deployManager struct{}

func newDeployManager(cfg *config, log *slog.Logger, jobs *jobManager, pkgs *packageCache) (*deployManager, error) {
	return &deployManager{}, nil
}

func cmdDeploy(args []string, stdout, stderr io.Writer) int   { return notYet(stderr, "deploy") }
func cmdReleases(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "releases") }
func cmdRollback(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "rollback") }
