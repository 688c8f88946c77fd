// Command hostscale-balancer will proxy client HTTP to pools of backends.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "hostscale-balancer: the proxy is not part of this build")
	os.Exit(2)
}
