package acl

import (
	"strings"
	"testing"
)

// FuzzParse: an ACL file of any bytes loads or fails with an error naming
// the file, and never panics; a loaded one admits each of its plain
// secrets as the token of its line.
func FuzzParse(f *testing.F) {
	f.Add([]byte("ops operator " + opsSecret + "\ngrafana read " + Hash(readerSecret) + "\n"))
	f.Add([]byte("# c\n\nedge agent,balancer " + agentSecret))
	f.Add([]byte("x read sha256:zz\n"))
	f.Add([]byte("\x00\xff read,,, \t\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		toks, err := parse("acl", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "acl") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(strings.TrimSpace(line))
			if len(f) != 3 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[2], HashPrefix) {
				continue
			}
			tok, ok := toks.Lookup(f[2])
			if !ok || tok.Name != f[0] {
				t.Fatalf("line %q: lookup gave %v %v", line, tok, ok)
			}
		}
	})
}
