package agent

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// hostCollector exposes the latest sample as gauges, built at scrape time
// so that a mount or core that disappears leaves no stale series.
type hostCollector struct {
	latest atomic.Pointer[pb.Sample]
}

var _ prometheus.Collector = (*hostCollector)(nil)

func hostDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("hostscale_host_"+name, help, labels, nil)
}

var (
	descCPU       = hostDesc("cpu_percent", "CPU busy share of all cores over the last interval, 0-100.")
	descCore      = hostDesc("cpu_core_percent", "CPU busy share of one core over the last interval, 0-100.", "core")
	descLoad1     = hostDesc("load1", "Load average over 1 minute.")
	descLoad5     = hostDesc("load5", "Load average over 5 minutes.")
	descLoad15    = hostDesc("load15", "Load average over 15 minutes.")
	descMemPct    = hostDesc("memory_used_percent", "Memory in use, percent of total.")
	descMemBytes  = hostDesc("memory_used_bytes", "Memory in use, bytes.")
	descSwapPct   = hostDesc("swap_used_percent", "Swap in use, percent of total.")
	descSwapBytes = hostDesc("swap_used_bytes", "Swap in use, bytes.")
	descDiskPct   = hostDesc("disk_used_percent", "Filesystem space in use, percent of total.", "mount")
	descDiskUsed  = hostDesc("disk_used_bytes", "Filesystem space in use, bytes.", "mount")
	descDiskTotal = hostDesc("disk_total_bytes", "Filesystem size, bytes.", "mount")
	descDiskRead  = hostDesc("disk_read_bytes_per_second", "Bytes read from disks per second over the last interval.")
	descDiskWrite = hostDesc("disk_write_bytes_per_second", "Bytes written to disks per second over the last interval.")
	descNetRx     = hostDesc("network_receive_bytes_per_second", "Bytes received per second over the last interval.")
	descNetTx     = hostDesc("network_transmit_bytes_per_second", "Bytes sent per second over the last interval.")
	descTCP       = hostDesc("tcp_connections", "Established TCP connections.")
	descProcs     = hostDesc("processes", "Processes running on the host.")
)

func (c *hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCPU, descCore, descLoad1, descLoad5, descLoad15,
		descMemPct, descMemBytes, descSwapPct, descSwapBytes, descDiskPct, descDiskUsed, descDiskTotal,
		descDiskRead, descDiskWrite, descNetRx, descNetTx, descTCP, descProcs} {
		ch <- d
	}
}

func (c *hostCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.latest.Load()
	if s == nil {
		return
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	g(descCPU, s.GetCpuPercent())
	for i, v := range s.GetCpuCorePercent() {
		g(descCore, v, strconv.Itoa(i))
	}
	g(descLoad1, s.GetLoad1())
	g(descLoad5, s.GetLoad5())
	g(descLoad15, s.GetLoad15())
	g(descMemPct, s.GetMemoryUsedPercent())
	g(descMemBytes, float64(s.GetMemoryUsedBytes()))
	g(descSwapPct, s.GetSwapUsedPercent())
	g(descSwapBytes, float64(s.GetSwapUsedBytes()))
	for _, d := range s.GetDisks() {
		g(descDiskPct, d.GetUsedPercent(), d.GetMount())
		g(descDiskUsed, float64(d.GetUsedBytes()), d.GetMount())
		g(descDiskTotal, float64(d.GetTotalBytes()), d.GetMount())
	}
	g(descDiskRead, s.GetDiskReadBytesPerSecond())
	g(descDiskWrite, s.GetDiskWriteBytesPerSecond())
	g(descNetRx, s.GetNetRxBytesPerSecond())
	g(descNetTx, s.GetNetTxBytesPerSecond())
	g(descTCP, float64(s.GetTcpConnections()))
	g(descProcs, float64(s.GetProcesses()))
}
