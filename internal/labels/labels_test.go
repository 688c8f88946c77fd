package labels

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse_matchesLikeKubernetes(t *testing.T) {
	set := map[string]string{"tier": "web", "zone": "a", "env": "prod", "example.com/gpu": ""}
	for sel, want := range map[string]bool{
		"":                         true,
		"tier=web":                 true,
		"tier==web":                true,
		"tier=db":                  false,
		"zone!=b":                  true,
		"zone!=a":                  false,
		"missing!=x":               true,
		"env in (prod, stage)":     true,
		"env in (stage)":           false,
		"env notin (stage,dev)":    true,
		"missing notin (x)":        true,
		"example.com/gpu":          true,
		"!example.com/gpu":         false,
		"!legacy":                  true,
		"tier=web, zone!=b ,!old":  true,
		"tier=web,zone=b":          false,
		"tier in (web),env=prod,x": false,
	} {
		s, err := Parse(sel)
		require.NoError(t, err, sel)
		require.Equal(t, want, s.Matches(set), sel)
	}
}

func TestParse_errorsSayWhere(t *testing.T) {
	for _, sel := range []string{"=web", "tier=web,", "tier in web", "tier in (a,", "tier in ()", "tier ~ web", "tier=we b", "Tier/x=1", "a=b c", "-bad=1", "tier=" + string(make([]byte, 70))} {
		_, err := Parse(sel)
		require.Error(t, err, sel)
		require.Contains(t, err.Error(), "selector")
	}
}

func TestParseSet(t *testing.T) {
	set, err := ParseSet("zone=a, tier=web,example.com/role=edge")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"zone": "a", "tier": "web", "example.com/role": "edge"}, set)
	for _, bad := range []string{"a b", "zone", "zone=a,zone=b", "=x", "k=v v", "k=-v"} {
		_, err := ParseSet(bad)
		require.Error(t, err, bad)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"tier=web,zone!=b", "env in (a,b)", "!x", "a notin (b)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err == nil {
			sel.Matches(map[string]string{"tier": "web"})
		}
	})
}
