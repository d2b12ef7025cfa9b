// Package lint holds tests that keep the project's shape: the import rules of DESIGN.md.
package lint

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/sluicemq/sluice"

// allowed lists, for each top-level package tree, the other trees of ours it may import.
// A tree may always import its own subpackages.
var allowed = map[string][]string{
	"wal":      {},
	"queue":    {"wal"},
	"mqtt":     {},
	"bridge":   {"mqtt", "queue"},
	"devices":  {},
	"loadtest": {"devices", "queue/client"},
	"configs":  {},
	"cmd":      {"*"},
}

// forbiddenExternal lists third-party prefixes a tree must not import in non-test code.
var forbiddenExternal = map[string][]string{
	"wal":      {"github.com/mochi-mqtt/"},
	"queue":    {"github.com/mochi-mqtt/"},
	"devices":  {"github.com/mochi-mqtt/"},
	"loadtest": {"github.com/mochi-mqtt/"},
	"configs":  {"github.com/mochi-mqtt/"},
}

func tree(importPath string) (top, rest string) {
	p := strings.TrimPrefix(importPath, module+"/")
	top, rest, _ = strings.Cut(p, "/")
	return top, p
}

func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"/...").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		pkg := fields[0]
		from, _ := tree(pkg)
		rules, known := allowed[from]
		if !known {
			t.Errorf("package %s is outside the fixed layout (cmd, mqtt, bridge, queue, wal, devices, configs, loadtest)", pkg)
			continue
		}
		checked++
		for _, imp := range fields[1:] {
			for _, bad := range forbiddenExternal[from] {
				if strings.HasPrefix(imp, bad) {
					t.Errorf("%s imports %s: %s/ must not depend on %s", pkg, imp, from, bad)
				}
			}
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to, toPath := tree(imp)
			if to == "cmd" && from != "cmd" {
				t.Errorf("%s imports %s: nothing imports cmd", pkg, imp)
				continue
			}
			if to == from || (len(rules) == 1 && rules[0] == "*") {
				continue
			}
			ok := false
			for _, a := range rules {
				if toPath == a || strings.HasPrefix(toPath, a+"/") || (a == to && !strings.Contains(a, "/")) {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s imports %s: DESIGN.md allows %s/ to import only %v", pkg, imp, from, rules)
			}
		}
	}
	if checked == 0 {
		t.Fatal("go list returned no packages of the module")
	}
}
