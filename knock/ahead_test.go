package knock_test

import (
	"testing"

	"github.com/webknock/webknock/knock"
)

// TestAhead: a step or knock page is ahead when the client has not taken
// the steps before it; a step in order, a repeat, a restart, a wrong
// status or method, a close page and a locked-out client are not.
func TestAhead(t *testing.T) {
	get := func(path string, status int) knock.Hit {
		return knock.Hit{Client: c1, Time: t0, Method: "GET", Path: path, Status: status}
	}
	tests := []struct {
		name  string
		taken []string // paths the client requested before (404)
		hit   knock.Hit
		want  bool
	}{
		{"first step", nil, get("/k/a1", 404), false},
		{"second step first", nil, get("/k/a2", 404), true},
		{"knock page first", nil, get("/k/open", 404), true},
		{"second step after the first", []string{"/k/a1"}, get("/k/a2", 404), false},
		{"third step after the first", []string{"/k/a1"}, get("/k/a3", 404), true},
		{"knock page one step short", []string{"/k/a1", "/k/a2"}, get("/k/open", 404), true},
		{"knock page after every step", []string{"/k/a1", "/k/a2", "/k/a3"}, get("/k/open", 404), false},
		{"first step again", []string{"/k/a1", "/k/a2"}, get("/k/a1", 404), false},
		{"step answered 200: no knock", nil, get("/k/a2", 200), false},
		{"knock page of web answered 404: no knock", nil, knock.Hit{Client: c1, Time: t0, Method: "GET", Path: "/w/open", Status: 404}, false},
		{"knock page of web answered 200", nil, knock.Hit{Client: c1, Time: t0, Method: "GET", Path: "/w/open", Status: 200}, true},
		{"method not allowed", nil, knock.Hit{Client: c1, Time: t0, Method: "POST", Path: "/k/a2", Status: 404}, false},
		{"a path of no sequence", nil, get("/index.html", 404), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustNew(t, testConfig())
			for _, p := range tt.taken {
				tr.Apply(get(p, 404), nil)
			}
			before := tr.Clients()
			if got := tr.Ahead(tt.hit); got != tt.want {
				t.Errorf("Ahead(%s %s %d) after %v = %v, want %v", tt.hit.Method, tt.hit.Path, tt.hit.Status, tt.taken, got, tt.want)
			}
			if tr.Clients() != before {
				t.Errorf("Ahead changed the client table: %d entries, had %d", tr.Clients(), before)
			}
		})
	}

	t.Run("locked out", func(t *testing.T) {
		tr := mustNew(t, testConfig())
		for range 3 { // three resets lock c1 out
			tr.Apply(get("/k/a1", 404), nil)
			tr.Apply(get("/k/a3", 404), nil)
		}
		if tr.Ahead(get("/k/a2", 404)) {
			t.Error("a locked-out client's step is ahead")
		}
	})
}
