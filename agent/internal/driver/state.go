package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// stateVersion is the format of state.json; a file of another version is
// refused rather than misread.
const stateVersion = 1

// stateFile is DataDir/instances/state.json: the newest applied
// assignment stamp and every instance with a live process, so that the
// next agent adopts them instead of starting them again.
type stateFile struct {
	Version   int             `json:"version"`
	Term      uint64          `json:"term"`
	Index     uint64          `json:"index"`
	Instances []stateInstance `json:"instances"`
}

type stateInstance struct {
	ID   string `json:"id"`
	Pool string `json:"pool"`
	// Template is protojson: the proto's own JSON mapping stays readable
	// by a newer agent.
	Template   json.RawMessage `json:"template,omitempty"`
	Port       int             `json:"port"`
	PID        int             `json:"pid"`
	StartTicks uint64          `json:"start_ticks"`
	Restarts   uint32          `json:"restarts"`
}

// decodeState parses and checks a state file. The template stays raw: see
// (stateInstance).template.
func decodeState(b []byte) (*stateFile, error) {
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("version %d, want %d", st.Version, stateVersion)
	}
	seen := make(map[string]bool, len(st.Instances))
	for i, in := range st.Instances {
		switch {
		case checkID(in.ID) != nil:
			return nil, fmt.Errorf("instance %d: %w", i, checkID(in.ID))
		case seen[in.ID]:
			return nil, fmt.Errorf("instance %q listed twice", in.ID)
		case in.PID <= 0:
			return nil, fmt.Errorf("instance %q: bad pid %d", in.ID, in.PID)
		case in.Port <= 0 || in.Port > 65535:
			return nil, fmt.Errorf("instance %q: bad port %d", in.ID, in.Port)
		}
		if _, err := in.template(); err != nil {
			return nil, fmt.Errorf("instance %q: template: %w", in.ID, err)
		}
		seen[in.ID] = true
	}
	return &st, nil
}

// template decodes the instance's template; nil when it had none.
func (in stateInstance) template() (*pb.InstanceTemplate, error) {
	if len(in.Template) == 0 {
		return nil, nil
	}
	t := new(pb.InstanceTemplate)
	if err := protojson.Unmarshal(in.Template, t); err != nil {
		return nil, err
	}
	return t, nil
}

// writeState replaces path with st atomically: a temporary file in the
// same directory, synced, then renamed over it. A crash leaves the old or
// the new file, never a torn one.
func writeState(path string, st *stateFile) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".state-*.json")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return errors.Join(err, os.Remove(tmp))
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		// The rename is durable only once the directory is synced.
		err = d.Sync()
		_ = d.Close()
		return err
	}
	return nil
}
