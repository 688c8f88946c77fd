// Package labels validates label sets and parses and matches label
// selectors in the Kubernetes grammar:
//
//	tier=web,zone!=b,env in (prod,stage),track notin (canary),gpu,!legacy
//
// `=` and `==` require a value, `!=` excludes it (and matches a missing
// key), `in` and `notin` take a set, a bare key requires the key and `!key`
// forbids it. Requirements are joined by commas and all must hold.
package labels

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	valueRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)
	prefRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// CheckKey reports why k is not a valid label key: an optional DNS
// subdomain prefix and '/', then a name of at most 63 characters of
// alphanumerics, '-', '_' and '.', starting and ending alphanumeric.
func CheckKey(k string) error {
	name := k
	if p, n, ok := strings.Cut(k, "/"); ok {
		if p == "" || len(p) > 253 || !prefRE.MatchString(p) {
			return fmt.Errorf("label key %q: prefix %q is not a DNS subdomain", k, p)
		}
		name = n
	}
	if name == "" || len(name) > 63 || !nameRE.MatchString(name) {
		return fmt.Errorf("label key %q: want at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric", k)
	}
	return nil
}

// CheckValue reports why v is not a valid label value (empty is valid).
func CheckValue(v string) error {
	if len(v) > 63 || !valueRE.MatchString(v) {
		return fmt.Errorf("label value %q: want at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric", v)
	}
	return nil
}

// Check validates a label set; the error names the first bad key in key
// order.
func Check(set map[string]string) error {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := CheckKey(k); err != nil {
			return err
		}
		if err := CheckValue(set[k]); err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
	}
	return nil
}

// ParseSet parses "k=v,k2=v2" into a validated label set.
func ParseSet(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return nil, fmt.Errorf("%q: want key=value", item)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("label key %q given twice", k)
		}
		out[k] = v
	}
	return out, Check(out)
}

// Op is a selector requirement's operator.
type Op int

const (
	OpEquals Op = iota
	OpNotEquals
	OpIn
	OpNotIn
	OpExists
	OpNotExists
)

// Requirement is one comma-separated term of a selector.
type Requirement struct {
	Key    string
	Op     Op
	Values []string
}

// Matches reports whether set satisfies r.
func (r Requirement) Matches(set map[string]string) bool {
	v, ok := set[r.Key]
	switch r.Op {
	case OpEquals:
		return ok && v == r.Values[0]
	case OpNotEquals:
		return !ok || v != r.Values[0]
	case OpIn:
		return ok && contains(r.Values, v)
	case OpNotIn:
		return !ok || !contains(r.Values, v)
	case OpExists:
		return ok
	case OpNotExists:
		return !ok
	}
	return false
}

func contains(vs []string, v string) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// Selector is a parsed selector; the zero value matches everything.
type Selector []Requirement

// Matches reports whether every requirement holds for set.
func (s Selector) Matches(set map[string]string) bool {
	for _, r := range s {
		if !r.Matches(set) {
			return false
		}
	}
	return true
}

// Empty reports whether the selector matches everything.
func (s Selector) Empty() bool { return len(s) == 0 }

// Parse parses a selector; the error says what is wrong and where.
func Parse(s string) (Selector, error) {
	p := &parser{in: s}
	var sel Selector
	p.skipSpace()
	if p.done() {
		return nil, nil
	}
	for {
		r, err := p.requirement()
		if err != nil {
			return nil, err
		}
		sel = append(sel, r)
		p.skipSpace()
		if p.done() {
			return sel, nil
		}
		if !p.eat(",") {
			return nil, p.errorf("expected ',' or the end")
		}
	}
}

type parser struct {
	in  string
	pos int
}

func (p *parser) done() bool { return p.pos >= len(p.in) }

func (p *parser) skipSpace() {
	for p.pos < len(p.in) && (p.in[p.pos] == ' ' || p.in[p.pos] == '\t') {
		p.pos++
	}
}

func (p *parser) eat(tok string) bool {
	p.skipSpace()
	if strings.HasPrefix(p.in[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("selector %q at offset %d: %s", p.in, p.pos, fmt.Sprintf(format, args...))
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/'
}

func (p *parser) word() string {
	p.skipSpace()
	start := p.pos
	for p.pos < len(p.in) && isWordByte(p.in[p.pos]) {
		p.pos++
	}
	return p.in[start:p.pos]
}

func (p *parser) requirement() (Requirement, error) {
	if p.eat("!") {
		k := p.word()
		if err := CheckKey(k); err != nil {
			return Requirement{}, p.errorf("%v", err)
		}
		return Requirement{Key: k, Op: OpNotExists}, nil
	}
	k := p.word()
	if err := CheckKey(k); err != nil {
		return Requirement{}, p.errorf("%v", err)
	}
	save := p.pos
	switch {
	case p.eat("=="), p.eat("="):
		return p.single(k, OpEquals)
	case p.eat("!="):
		return p.single(k, OpNotEquals)
	}
	p.pos = save
	switch w := p.word(); w {
	case "in":
		return p.set(k, OpIn)
	case "notin":
		return p.set(k, OpNotIn)
	case "":
		return Requirement{Key: k, Op: OpExists}, nil
	default:
		return Requirement{}, p.errorf("unexpected %q after key %q", w, k)
	}
}

func (p *parser) single(k string, op Op) (Requirement, error) {
	v := p.word()
	if err := CheckValue(v); err != nil || strings.Contains(v, "/") {
		return Requirement{}, p.errorf("bad value %q for key %q", v, k)
	}
	return Requirement{Key: k, Op: op, Values: []string{v}}, nil
}

func (p *parser) set(k string, op Op) (Requirement, error) {
	if !p.eat("(") {
		return Requirement{}, p.errorf("expected '(' after in/notin")
	}
	var vs []string
	for {
		v := p.word()
		if err := CheckValue(v); err != nil || v == "" || strings.Contains(v, "/") {
			return Requirement{}, p.errorf("bad value %q in the set of key %q", v, k)
		}
		vs = append(vs, v)
		if p.eat(")") {
			break
		}
		if !p.eat(",") {
			return Requirement{}, p.errorf("expected ',' or ')' in the set of key %q", k)
		}
	}
	return Requirement{Key: k, Op: op, Values: vs}, nil
}
