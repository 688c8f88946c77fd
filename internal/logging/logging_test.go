package logging

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
)

func TestNew_levelsFormatsAndErrors(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, Options{Level: "warn", Format: "json"}, "controller", "member", "c1")
	require.NoError(t, err)
	l.Info("hidden")
	l.Warn("shown", "pool", "web", "node", "web-1")
	require.NotContains(t, buf.String(), "hidden")
	require.Contains(t, buf.String(), `"component":"controller"`)
	require.Contains(t, buf.String(), `"member":"c1"`)
	require.Equal(t, 1, strings.Count(buf.String(), `"node"`), "the node a line names is the only node")
	require.Contains(t, buf.String(), `"pool":"web"`)

	_, err = New(&buf, Options{Level: "loud", Format: "text"}, "x")
	require.ErrorContains(t, err, "-log-level")
	_, err = New(&buf, Options{Level: "info", Format: "xml"}, "x")
	require.ErrorContains(t, err, "-log-format")
}

func TestHCLog_forwardsToSlog(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, Options{Level: "info", Format: "text"}, "controller")
	require.NoError(t, err)
	h := HCLog(l, "raft")
	h.Debug("quiet")
	h.Named("transport").With("peer", "c2").Warn("slow", "ms", 12)
	h.Error("bad")
	out := buf.String()
	require.NotContains(t, out, "quiet")
	require.Contains(t, out, "subsystem=raft.transport")
	require.Contains(t, out, "peer=c2")
	require.Contains(t, out, "ms=12")
	require.Equal(t, 2, strings.Count(out, "\n"))
	require.False(t, h.IsDebug())
	require.True(t, h.IsWarn())
	require.Equal(t, []any{"peer", "c2"}, h.With("peer", "c2").ImpliedArgs())
	var _ hclog.Logger = h
}

func TestHCLog_rendersHCLogValues(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, Options{Level: "info", Format: "text"}, "controller")
	require.NoError(t, err)
	h := HCLog(l, "raft")
	h.Info("initial configuration", "servers", hclog.Fmt("%+v", []string{"c1", "c2"}), "flags", hclog.Hex(255),
		"mode", hclog.Octal(8), "bits", hclog.Binary(5), "name", hclog.Quote("a b"), "empty", hclog.Format{})
	h.With("term", hclog.Fmt("t%d", 7)).Warn("vote")
	out := buf.String()
	require.Contains(t, out, `servers="[c1 c2]"`)
	require.NotContains(t, out, "%+v")
	require.Contains(t, out, "flags=0xff")
	require.Contains(t, out, "mode=010")
	require.Contains(t, out, "bits=0b101")
	require.Contains(t, out, `name="a b"`)
	require.Contains(t, out, `empty=""`)
	require.Contains(t, out, "term=t7")
}
