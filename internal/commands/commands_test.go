package commands

import (
	"strings"
	"testing"
)

func TestParse_badRules(t *testing.T) {
	for _, tc := range []struct{ list, want string }{
		{"bin/sh", `"bin/sh": not an absolute path`},
		{"/usr/bin/*,~/x", `"~/x": not an absolute path`},
		{"/opt/**/bin", "`**` is allowed only as the last element"},
		{"/opt/a**", "`**` is allowed only as the last element"},
		{"/opt/../bin/*", "not a clean path"},
		{"/opt/bin/", "not a clean path"},
		{"/opt//bin", "not a clean path"},
		{"/opt/[a-", "bad pattern"},
		{`/opt\/x`, "backslash"},
		{strings.Repeat("/a,", MaxRules+1), "at most 256"},
	} {
		r, err := Parse(tc.list)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, %v; want an error with %q", tc.list, r, err, tc.want)
		}
	}
}

func TestRules_Allows(t *testing.T) {
	r, err := Parse(" /usr/bin/python3 , /opt/shop/bin/*,/srv/apps/**,/home/*/app/**")
	if err != nil {
		t.Fatal(err)
	}
	for exe, want := range map[string]bool{
		"/usr/bin/python3":              true,
		"/usr/bin/python3.11":           false,
		"/usr/bin/sh":                   false,
		"/opt/shop/bin/web":             true,
		"/opt/shop/bin/sub/web":         false, // `*` does not cross a `/`
		"/opt/shop/bin":                 false,
		"/opt/shop/bin/../../../bin/sh": false, // cleaned first
		"/opt/shop/bin/./web":           true,
		"/srv/apps/a":                   true,
		"/srv/apps/a/b/c":               true,
		"/srv/apps":                     false, // `**` needs a file below
		"/srv/appsx/a":                  false,
		"/srv/apps/../etc/x":            false,
		"/home/ann/app/bin/run":         true,
		"/home/ann/other/run":           false,
		"bin/sh":                        false, // not absolute
		"":                              false,
	} {
		if got := r.Allows(exe); got != want {
			t.Errorf("Allows(%q) = %v, want %v", exe, got, want)
		}
	}
}

func TestRules_nilAllowsAll(t *testing.T) {
	r, err := Parse(" , ")
	if err != nil || r != nil {
		t.Fatalf("Parse of an empty list = %v, %v; want nil, nil", r, err)
	}
	if !r.Allows("/bin/sh") || !r.MayAllow("sh") || r.Patterns() != nil {
		t.Fatal("the nil Rules must allow every executable")
	}
	if none := (&Rules{}); none.Allows("/bin/sh") || none.MayAllow("sh") {
		t.Fatal("a Rules without patterns must allow nothing")
	}
	unchecked := Of([]string{"relative/*", "/opt/[a-", "/usr/bin/*"})
	if unchecked.Allows("/opt/a") || unchecked.Allows("/relative/x") || Of([]string{"relative/*"}).MayAllow("sh") || Of(nil) != nil {
		t.Fatal("Of: a pattern that does not parse must match nothing")
	}
	if !unchecked.Allows("/usr/bin/x") || !unchecked.MayAllow("x") {
		t.Fatal("Of: the patterns that parse still match")
	}
	all, err := Parse("/**")
	if err != nil || !all.Allows("/bin/sh") || !all.MayAllow("anything") {
		t.Fatalf("/** must allow every absolute path: %v", err)
	}
}

func TestRules_MayAllow(t *testing.T) {
	r, err := Parse("/usr/bin/python3,/opt/shop/bin/web-*")
	if err != nil {
		t.Fatal(err)
	}
	for cmd, want := range map[string]bool{
		"/usr/bin/python3": true,
		"/usr/bin/perl":    false,
		"python3":          true, // allowed in /usr/bin: the agent checks the path it finds
		"perl":             false,
		"web-a":            true,
		"./web-a":          false, // relative to the agent's directory
		"bin/web-a":        false,
		"":                 false,
	} {
		if got := r.MayAllow(cmd); got != want {
			t.Errorf("MayAllow(%q) = %v, want %v", cmd, got, want)
		}
	}
	if got := r.Patterns(); len(got) != 2 || got[1] != "/opt/shop/bin/web-*" {
		t.Errorf("Patterns() = %q", got)
	}
}

func FuzzAllows(f *testing.F) {
	f.Add("/opt/a/**", "/opt/a/../b")
	f.Add("/usr/bin/*", "/usr/bin/x")
	f.Fuzz(func(t *testing.T, pattern, exe string) {
		r, err := New([]string{pattern})
		if err != nil {
			return
		}
		if r.Allows(exe) && !strings.HasPrefix(exe, "/") {
			t.Fatalf("%q allows the relative %q", pattern, exe)
		}
		_ = r.MayAllow(exe)
	})
}
