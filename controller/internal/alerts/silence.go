package alerts

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Matcher matches one label, as in Alertmanager's API: equal or regex,
// possibly negated. A missing label matches as the empty string.
type Matcher struct {
	Name    string
	Value   string
	IsEqual bool // false negates the match (!= or !~)
	IsRegex bool // Value is an RE2 regular expression, anchored at both ends
}

// String formats m as name="value", name!="value", name=~"re" or
// name!~"re".
func (m Matcher) String() string {
	op := "="
	if !m.IsEqual {
		op = "!"
	}
	if m.IsRegex {
		op += "~"
	} else if !m.IsEqual {
		op += "="
	}
	return m.Name + op + strconv.Quote(m.Value)
}

// compiledMatcher is a Matcher with its regex compiled.
type compiledMatcher struct {
	Matcher
	re *regexp.Regexp
}

func (m Matcher) compile() (compiledMatcher, error) {
	c := compiledMatcher{Matcher: m}
	if m.IsRegex {
		re, err := regexp.Compile("^(?:" + m.Value + ")$")
		if err != nil {
			return c, err
		}
		c.re = re
	}
	return c, nil
}

func (c compiledMatcher) matches(ls map[string]string) bool {
	v := ls[c.Name]
	var ok bool
	if c.re != nil {
		ok = c.re.MatchString(v)
	} else {
		ok = v == c.Value
	}
	return ok == c.IsEqual
}

func compileMatchers(ms []Matcher, field string) ([]compiledMatcher, error) {
	out := make([]compiledMatcher, len(ms))
	for i, m := range ms {
		f := fmt.Sprintf("%s[%d]", field, i)
		if m.Name == "" {
			return nil, fieldErr(f+".name", "must not be empty")
		}
		c, err := m.compile()
		if err != nil {
			return nil, &FieldError{Field: f + ".value", Err: err}
		}
		out[i] = c
	}
	return out, nil
}

// Silence suppresses the delivery (not the evaluation) of alerts whose
// labels match all its matchers while StartsAt <= now < EndsAt.
type Silence struct {
	ID        string
	Matchers  []Matcher
	StartsAt  time.Time
	EndsAt    time.Time
	CreatedBy string
	Comment   string
}

// Validate checks the silence. Like Alertmanager it requires at least one
// matcher that does not match the empty string, so a silence cannot mute
// everything by accident.
func (s Silence) Validate() error {
	if strings.TrimSpace(s.ID) == "" {
		return fieldErr("silence.id", "must not be empty")
	}
	if len(s.Matchers) == 0 {
		return fieldErr("silence.matchers", "at least one matcher is required")
	}
	cms, err := compileMatchers(s.Matchers, "silence.matchers")
	if err != nil {
		return err
	}
	empty := true
	for _, c := range cms {
		if !c.matches(nil) {
			empty = false
		}
	}
	if empty {
		return fieldErr("silence.matchers", "every matcher matches the empty string; the silence would mute everything")
	}
	if !s.EndsAt.After(s.StartsAt) {
		return fieldErr("silence.ends_at", "must be after starts_at")
	}
	return nil
}

// Active reports whether now is inside [StartsAt, EndsAt).
func (s Silence) Active(now time.Time) bool {
	return !now.Before(s.StartsAt) && now.Before(s.EndsAt)
}

// Matches reports whether the silence is active at now and mutes an alert
// with these labels. A silence whose regex does not compile matches
// nothing.
func (s Silence) Matches(ls map[string]string, now time.Time) bool {
	if !s.Active(now) {
		return false
	}
	cms, err := compileMatchers(s.Matchers, "silence.matchers")
	if err != nil {
		return false
	}
	return matchAll(cms, ls)
}

func matchAll(cms []compiledMatcher, ls map[string]string) bool {
	for _, c := range cms {
		if !c.matches(ls) {
			return false
		}
	}
	return true
}
