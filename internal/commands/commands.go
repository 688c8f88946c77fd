// Package commands holds an agent's rules of which executables it runs
// (hostscale-agent -allow-commands), so that the controllers, who place a
// pool's instances, and the agent, who starts them, read them alike.
//
// A rule is an absolute path pattern in filepath.Match syntax, matched
// against the whole, cleaned path of the executable: `*` and `?` do not
// cross a `/`, so /opt/shop/bin/* allows the files of that directory and
// not those below it. A rule whose last element is `**` allows every file
// below its directory, at any depth: /opt/apps/** allows /opt/apps/a/b/c.
package commands

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"
)

// MaxRules bounds the rules of one agent.
const MaxRules = 256

// Rules are the executables an agent runs. The nil *Rules allows every
// executable; a Rules without patterns (&Rules{}) allows none.
type Rules struct {
	patterns []string
}

// Parse reads comma-separated rules; an empty list (nothing but commas
// and spaces) gives nil, every executable allowed.
func Parse(list string) (*Rules, error) {
	var ps []string
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p != "" {
			ps = append(ps, p)
		}
	}
	return New(ps)
}

// New checks patterns, each an absolute path pattern; none gives nil.
func New(patterns []string) (*Rules, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	if len(patterns) > MaxRules {
		return nil, fmt.Errorf("%d rules, at most %d", len(patterns), MaxRules)
	}
	r := &Rules{patterns: make([]string, 0, len(patterns))}
	for _, p := range patterns {
		if err := check(p); err != nil {
			return nil, fmt.Errorf("%q: %w", p, err)
		}
		r.patterns = append(r.patterns, p)
	}
	return r, nil
}

// Of wraps patterns New already accepted (a node's facts, which the
// controllers check at its agent's Hello) without checking or copying them
// again; patterns must not change afterwards. A pattern that does not
// parse, or is not absolute, matches nothing. No patterns give nil.
func Of(patterns []string) *Rules {
	if len(patterns) == 0 {
		return nil
	}
	return &Rules{patterns: patterns}
}

func check(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("not an absolute path")
	}
	if strings.ContainsAny(p, "\\\x00") {
		return fmt.Errorf("holds a backslash or a NUL")
	}
	if dir, ok := strings.CutSuffix(p, "/**"); ok {
		p = dir + "/x"
	}
	if strings.Contains(p, "**") {
		return fmt.Errorf("`**` is allowed only as the last element")
	}
	if path.Clean(p) != p {
		return fmt.Errorf("not a clean path (no `.` or `..` elements, no `//`, no final `/`)")
	}
	if _, err := path.Match(p, "/"); err != nil {
		return fmt.Errorf("bad pattern: %w", err)
	}
	return nil
}

// Patterns returns the rules as given; nil for every executable.
func (r *Rules) Patterns() []string {
	if r == nil {
		return nil
	}
	return append([]string(nil), r.patterns...)
}

// Allows reports whether the executable at the absolute path exe may run;
// exe is cleaned first, so `..` elements cannot step out of a rule.
func (r *Rules) Allows(exe string) bool {
	if r == nil {
		return true
	}
	if !filepath.IsAbs(exe) {
		return false
	}
	exe = filepath.Clean(exe)
	for _, p := range r.patterns {
		if matches(p, exe) {
			return true
		}
	}
	return false
}

// MayAllow reports whether the command a template names may run under r,
// as far as a controller can tell without the agent's PATH: an absolute
// command must be allowed; a bare name must be allowed in some directory
// a rule names (the agent decides on the path it finds).
func (r *Rules) MayAllow(command string) bool {
	if r == nil {
		return true
	}
	if filepath.IsAbs(command) {
		return r.Allows(command)
	}
	if command == "" || strings.Contains(command, "/") {
		// A relative path resolves against the agent's working directory:
		// nothing a rule can be sure of.
		return false
	}
	for _, p := range r.patterns {
		if !strings.HasPrefix(p, "/") {
			continue // not a rule (see Of)
		}
		if strings.HasSuffix(p, "/**") {
			return true
		}
		if ok, _ := path.Match(path.Base(p), command); ok {
			return true
		}
	}
	return false
}

func matches(p, exe string) bool {
	if dir, ok := strings.CutSuffix(p, "/**"); ok {
		// dir's elements match exe's first ones; any follow, at least one.
		dp, ep := strings.Split(dir, "/"), strings.Split(exe, "/")
		if len(ep) <= len(dp) || ep[len(ep)-1] == "" {
			return false
		}
		ok, _ := path.Match(dir, strings.Join(ep[:len(dp)], "/"))
		return ok
	}
	ok, _ := path.Match(p, exe)
	return ok
}
