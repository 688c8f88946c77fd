package alerts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSilence_Matches(t *testing.T) {
	ls := map[string]string{"alertname": "cpu-high", "node": "web-3", "severity": "warning"}
	win := func(ms ...Matcher) Silence {
		return Silence{ID: "s1", Matchers: ms, StartsAt: t0, EndsAt: t0.Add(time.Hour)}
	}
	tests := []struct {
		name string
		s    Silence
		at   time.Time
		want bool
	}{
		{"equal", win(Matcher{Name: "node", Value: "web-3", IsEqual: true}), t0, true},
		{"equal other value", win(Matcher{Name: "node", Value: "web-4", IsEqual: true}), t0, false},
		{"not equal", win(Matcher{Name: "severity", Value: "critical"}), t0, true},
		{"regex", win(Matcher{Name: "node", Value: "web-[0-9]+", IsEqual: true, IsRegex: true}), t0, true},
		{"regex is anchored", win(Matcher{Name: "node", Value: "web", IsEqual: true, IsRegex: true}), t0, false},
		{"regex alternation is anchored", win(Matcher{Name: "node", Value: "db|web", IsEqual: true, IsRegex: true}), t0, false},
		{"negated regex", win(Matcher{Name: "node", Value: "db-.*", IsRegex: true}), t0, true},
		{"missing label is empty", win(Matcher{Name: "team", Value: "", IsEqual: true}, Matcher{Name: "node", Value: "web-3", IsEqual: true}), t0, true},
		{"all matchers must hold", win(Matcher{Name: "node", Value: "web-3", IsEqual: true}, Matcher{Name: "severity", Value: "critical", IsEqual: true}), t0, false},
		{"before start", win(Matcher{Name: "node", Value: "web-3", IsEqual: true}), t0.Add(-time.Second), false},
		{"at end", win(Matcher{Name: "node", Value: "web-3", IsEqual: true}), t0.Add(time.Hour), false},
		{"bad regex matches nothing", win(Matcher{Name: "node", Value: "(", IsEqual: true, IsRegex: true}), t0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.s.Matches(ls, tt.at))
		})
	}
}

func TestSilence_Validate(t *testing.T) {
	ok := Silence{ID: "s1", Matchers: []Matcher{{Name: "node", Value: "n1", IsEqual: true}}, StartsAt: t0, EndsAt: t0.Add(time.Hour)}
	require.NoError(t, ok.Validate())
	tests := []struct {
		name  string
		edit  func(*Silence)
		field string
	}{
		{"no id", func(s *Silence) { s.ID = "" }, "silence.id"},
		{"no matchers", func(s *Silence) { s.Matchers = nil }, "silence.matchers"},
		{"empty name", func(s *Silence) { s.Matchers[0].Name = "" }, "silence.matchers[0].name"},
		{"bad regex", func(s *Silence) { s.Matchers[0] = Matcher{Name: "node", Value: "(", IsEqual: true, IsRegex: true} }, "silence.matchers[0].value"},
		{"matches everything", func(s *Silence) { s.Matchers[0] = Matcher{Name: "node", Value: ".*", IsEqual: true, IsRegex: true} }, "silence.matchers"},
		{"ends before start", func(s *Silence) { s.EndsAt = s.StartsAt }, "silence.ends_at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			s.Matchers = append([]Matcher(nil), ok.Matchers...)
			tt.edit(&s)
			err := s.Validate()
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tt.field, fe.Field)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
}

func TestMatcher_String(t *testing.T) {
	require.Equal(t, `a="b"`, Matcher{Name: "a", Value: "b", IsEqual: true}.String())
	require.Equal(t, `a!="b"`, Matcher{Name: "a", Value: "b"}.String())
	require.Equal(t, `a=~"b.*"`, Matcher{Name: "a", Value: "b.*", IsEqual: true, IsRegex: true}.String())
	require.Equal(t, `a!~"b"`, Matcher{Name: "a", Value: "b", IsRegex: true}.String())
}
