package mqtt

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogLines: a first start on a fresh store logs no error (a store without $SYS info is not
// one), and every JSON line carries "component" once (mochi's lines: component=mochi).
func TestLogLines(t *testing.T) {
	var buf lockedBuf
	srv := startServer(t, Options{StorageDir: t.TempDir(), Logger: zerolog.New(&buf).Level(zerolog.DebugLevel)})
	mustV5(t, srv.Addr("tcp").String(), v5opts{id: "c"})
	components := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if n := strings.Count(line, `"component":`); n != 1 {
			t.Errorf("%d component fields: %s", n, line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %s", line)
		}
		if m["level"] == "error" {
			t.Errorf("error logged on a fresh start: %s", line)
		}
		components[m["component"].(string)] = true
	}
	if !components["mqtt"] {
		t.Errorf("no line with component=mqtt in %q", buf.String())
	}
}
