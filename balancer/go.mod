module github.com/hostscale/hostscale/balancer

go 1.26.0
