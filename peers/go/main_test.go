package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	good := map[string]command{
		"acquire job-1 2000":           {verb: "acquire", name: "job-1", ttl: 2 * time.Second},
		"try a.b:c_d 1":                {verb: "try", name: "a.b:c_d", ttl: time.Millisecond},
		"release x":                    {verb: "release", name: "x"},
		"hold x 0":                     {verb: "hold", name: "x"},
		"throughput 64 same 2000 1500": {verb: "throughput", name: "-", tasks: 64, same: true, dur: 2 * time.Second, ttl: 1500 * time.Millisecond},
		"throughput 1 distinct 5 5":    {verb: "throughput", name: "-", tasks: 1, dur: 5 * time.Millisecond, ttl: 5 * time.Millisecond},
		"quit":                         {verb: "quit", name: "-"},
	}
	for line, want := range good {
		got, err := parseCommand(strings.Fields(line))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %+v, %v; want %+v", line, got, err, want)
		}
	}
	// Bad lines, with the name the error reply carries.
	bad := map[string]string{
		"":               "-",
		"nope":           "-",
		"acquire":        "-",
		"acquire x":      "x",
		"acquire x 0":    "x",
		"acquire x -1":   "x",
		"acquire x 1.5":  "x",
		"acquire a/b 10": "-",
		"acquire " + strings.Repeat("n", 65) + " 10": "-",
		"try x 10 extra":             "x",
		"release":                    "-",
		"hold x 604800001":           "x",
		"throughput 0 same 10 10":    "-",
		"throughput 1025 same 10 10": "-",
		"throughput 4 both 10 10":    "-",
		"throughput 4 same 0 10":     "-",
		"quit now":                   "-",
	}
	for line, name := range bad {
		got, err := parseCommand(strings.Fields(line))
		if err == nil {
			t.Errorf("%q: accepted as %+v", line, got)
		} else if got.name != name {
			t.Errorf("%q: error reply names %q, want %q", line, got.name, name)
		}
	}
}

func TestSplitRedisURL(t *testing.T) {
	got, err := splitRedisURL("redis://u:p@h1:1,h2:2,h3:3/2?dial_timeout=1s")
	want := []string{"redis://u:p@h1:1/2?dial_timeout=1s", "redis://u:p@h2:2/2?dial_timeout=1s", "redis://u:p@h3:3/2?dial_timeout=1s"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	for _, u := range []string{"http://h:1", "redis://", "h:1"} {
		if _, err := splitRedisURL(u); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
}

func TestEtcdEndpoints(t *testing.T) {
	got, err := etcdEndpoints("http://a:1,b:2/")
	if want := []string{"http://a:1", "http://b:2"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	if _, err := etcdEndpoints(","); err == nil {
		t.Error("empty endpoint list accepted")
	}
}

func TestTTLSecondsRoundsUp(t *testing.T) {
	for ms, want := range map[int]int{1: 1, 999: 1, 1000: 1, 1001: 2, 2000: 2, 2500: 3} {
		if got := ttlSeconds(time.Duration(ms) * time.Millisecond); got != want {
			t.Errorf("%d ms: %d s, want %d", ms, got, want)
		}
	}
}

func TestMonoMicrosIsCLOCKMONOTONIC(t *testing.T) {
	a := monoMicros()
	time.Sleep(20 * time.Millisecond)
	b := monoMicros()
	if a <= 0 || b-a < 20_000 || b-a > 2_000_000 {
		t.Errorf("monoMicros: %d then %d", a, b)
	}
}
