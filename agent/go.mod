module github.com/hostscale/hostscale/agent

go 1.26.0

replace (
	github.com/hostscale/hostscale/balancer => ../balancer
	github.com/hostscale/hostscale/controller => ../controller
	github.com/hostscale/hostscale/internal => ../internal
	github.com/hostscale/hostscale/proto => ../proto
)

require github.com/hostscale/hostscale/internal v0.0.0-00010101000000-000000000000
