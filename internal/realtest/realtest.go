// Package realtest is the one gate of the tests that use the real thing
// (root, network namespaces, nginx, Apache, iptables): they skip, saying
// why, where they cannot run, unless WK_E2E=require (as .ci/run sets),
// which makes a missing prerequisite a failure.
package realtest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Env is the variable that makes the real tests mandatory when "require".
const Env = "WK_E2E"

// Require skips or fails tb unless it runs as root with every program on
// PATH. what names the test for the message.
func Require(tb testing.TB, what string, programs ...string) {
	tb.Helper()
	require(tb, what, true, programs)
}

// RequirePrograms is Require for a test that needs the programs (given as
// names on PATH or absolute paths) but not root.
func RequirePrograms(tb testing.TB, what string, programs ...string) {
	tb.Helper()
	require(tb, what, false, programs)
}

func require(tb testing.TB, what string, root bool, programs []string) {
	tb.Helper()
	var missing []string
	if root && os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("%s needs %s (.ci/run installs everything and sets %s=require)", what, strings.Join(missing, ", "), Env)
	if os.Getenv(Env) == "require" {
		tb.Fatal(msg)
	}
	tb.Skip("skipping: " + msg)
}
