package main

// transfer.go: files and the package cache (PROTOCOL §5 "Files", "Packages").
// STUB: to be built by the files issue.

import (
	"errors"
	"io"
	"log/slog"
	"syscall"
)

// packageCache is the content-addressed package store under <home>/packages.
type packageCache struct{}

func newPackageCache(cfg *config, log *slog.Logger) (*packageCache, error) {
	return &packageCache{}, nil
}

// isDiskFull reports whether err means the disk is full.
func isDiskFull(err error) bool { return errors.Is(err, syscall.ENOSPC) }

func cmdUpload(args []string, stdout, stderr io.Writer) int   { return notYet(stderr, "upload") }
func cmdDownload(args []string, stdout, stderr io.Writer) int { return notYet(stderr, "download") }
func cmdPush(args []string, stdout, stderr io.Writer) int     { return notYet(stderr, "push") }
