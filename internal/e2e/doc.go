// Package e2e holds the end-to-end tests that run every hostscale binary
// together on loopback: controllers, agents running instances of the demo
// backend, and a balancer in front of them.
package e2e
