// Package version holds the version every hostscale binary reports; the
// Makefile sets it with -ldflags "-X .../version.Version=...".
package version

// Version is the release of this build.
var Version = "0.1.0-dev"
