package alerts

import (
	"strings"
	"testing"
)

func FuzzParseExpr(f *testing.F) {
	for _, s := range []string{"cpu_percent > 90", "load1<=0.5", "x != -1e-3", "a == 0", "", ">", "cpu_percent >= NaN", "a > 1 b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseExpr(s)
		if err != nil {
			return
		}
		if !e.Op.Valid() || e.Metric == "" {
			t.Fatalf("ParseExpr(%q) = %+v without error", s, e)
		}
		back, err := ParseExpr(e.String())
		if err != nil || back != e {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", s, e, e.String(), back, err)
		}
	})
}

func FuzzCheckTemplate(f *testing.F) {
	for _, s := range []string{"{{ .Node }}", `{{ printf "%.1f" .Value }}`, "{{ .Labels.team }}", "{{", "{{ .Nope }}", "{{ range .Labels }}{{ . }}{{ end }}", "plain"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := CheckTemplate("summary", s)
		if err != nil && !strings.HasPrefix(err.Error(), "template: summary") {
			t.Fatalf("error does not name the template: %v", err)
		}
		r := cpuRule()
		r.Annotations = map[string]string{"summary": s}
		verr := r.Validate()
		if (err == nil) != (verr == nil) {
			t.Fatalf("CheckTemplate %v but Validate %v", err, verr)
		}
		if verr != nil && !strings.HasPrefix(verr.Error(), "rule.annotations.summary: ") {
			t.Fatalf("Validate does not name the field: %v", verr)
		}
		if err == nil {
			// A template that validated renders without panicking.
			c, cerr := compile(r)
			if cerr != nil {
				t.Fatal(cerr)
			}
			_ = c.render(Alert{Labels: map[string]string{"node": "n"}, Node: "n", Rule: r.Name})
		}
	})
}
