package main

// ops_health.go: "tentacle health", the local probe for Docker HEALTHCHECK,
// Kubernetes probes and monitoring. It proves what a server needs: the agent
// accepts a TLS connection, presents its own key, and answers a request.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

const usageHealth = `
Usage:
  tentacle health [-home DIR] [-listen ADDR] [-cert FILE -key FILE] [-timeout D]

Checks that the agent on this machine answers: connects to the address it
listens on (an unspecified host, as in ":10933" or "0.0.0.0:10933", means
127.0.0.1; "[::]" means ::1) with the agent's own identity, pinned to its own
thumbprint, and sends ping. The agent trusts its own key for read, so this
needs no setup. Prints "ok" and exits 0 when the agent answers; prints the
reason and exits 1 when it does not.

Home, address and identity are found the way "tentacle run" finds them:
flags, then TENTACLE_HOME, TENTACLE_LISTEN, TENTACLE_CERT_FILE and
TENTACLE_KEY_FILE, then the defaults. So a container's HEALTHCHECK or a
Kubernetes probe can run it with no arguments.

Example:
  tentacle health
  tentacle health -home /var/lib/tentacle -listen :10933
`

func cmdHealth(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("health", usageHealth, stderr)
	home := homeFlag(fs)
	listen := listenFlag(fs)
	cert := fs.String("cert", os.Getenv("TENTACLE_CERT_FILE"), "the agent's certificate PEM `file`, if not in home (env TENTACLE_CERT_FILE)")
	key := fs.String("key", os.Getenv("TENTACLE_KEY_FILE"), "the agent's private key PEM `file`, if not in home (env TENTACLE_KEY_FILE)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this `long`")
	if _, code, ok := parseFlags(fs, args, 0, 0); !ok {
		return code
	}
	if (*cert == "") != (*key == "") {
		_, code, _ := usageError(fs, "-cert and -key go together")
		return code
	}
	addr, err := probeAddr(*listen)
	if err != nil {
		_, code, _ := usageError(fs, "%v", err)
		return code
	}
	if err := checkHealth(addr, &config{Home: *home, CertFile: *cert, KeyFile: *key}, *timeout); err != nil {
		fmt.Fprintf(stderr, "tentacle health: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// checkHealth pings the agent at addr as the agent itself.
func checkHealth(addr string, cfg *config, timeout time.Duration) error {
	id, err := loadIdentity(cfg.keyPath(), cfg.certPath())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no agent identity at %q: pass the agent's -home (or set TENTACLE_HOME), or -cert and -key if it uses mounted files", cfg.keyPath())
		}
		return err
	}
	deadline := time.Now().Add(timeout)
	cc, err := dialAgent(addr, id, id.thumbprint, "", timeout, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) || strings.Contains(err.Error(), "connection refused") {
			return fmt.Errorf("the agent at %s does not answer: %v", addr, err)
		}
		return err
	}
	defer cc.Close()
	cc.tc.SetDeadline(deadline)
	var r map[string]bool
	if err := cc.call("ping", nil, &r); err != nil {
		return fmt.Errorf("the agent at %s did not answer ping: %v", addr, err)
	}
	if !r["pong"] {
		return fmt.Errorf("the agent at %s answered ping without pong", addr)
	}
	return nil
}

// probeAddr turns a listen address into one to connect to: an unspecified
// host becomes the loopback of its family, and a missing port the default.
func probeAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		host, port = strings.Trim(listen, "[]"), defaultPort
	}
	if port == "0" {
		return "", fmt.Errorf("-listen %q has port 0: pass the port the agent really listens on", listen)
	}
	ip := net.ParseIP(host)
	switch {
	case host == "" || (ip != nil && ip.Equal(net.IPv4zero)):
		host = "127.0.0.1"
	case ip != nil && ip.Equal(net.IPv6unspecified):
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}
