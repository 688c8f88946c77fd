// Command hostscale-agent will sample its host and run the instances the
// controllers assign to it. This build only reports its version.
package main

import (
	"fmt"
	"os"

	"github.com/hostscale/hostscale/internal/version"
)

func main() {
	fmt.Fprintln(os.Stderr, "hostscale-agent", version.Version+": host sampling is not part of this build")
	os.Exit(2)
}
