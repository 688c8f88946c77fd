// Package node holds what identifies an agent to the controllers: its node
// id (a DNS label, chosen once and kept in the data directory) and its
// labels (Kubernetes-style key=value pairs), and the parsing and
// validation of both.
//
// It never talks to a controller.
package node
