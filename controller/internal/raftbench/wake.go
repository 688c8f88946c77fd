package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"text/tabwriter"
	"time"
)

// runWake measures what a hop costs on this machine without hostscale: a
// one-byte round trip between two goroutines over loopback TCP, back to
// back and after the caller idled, which lets the other side's thread and
// core go to sleep. Every hop of an API write (client to server, follower
// to leader, and Raft's own) pays the idle case when one client writes.
func runWake(w io.Writer) {
	l := listen()
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "loopback round trip\tsleep before (measured mean)\tp50\tp90\t")
	b := make([]byte, 1)
	for _, idle := range []time.Duration{0, 100 * time.Microsecond, 2 * time.Millisecond} {
		var lat []time.Duration
		var idled time.Duration
		for range 2000 {
			if idle > 0 {
				s := time.Now()
				time.Sleep(idle)
				idled += time.Since(s)
			}
			s := time.Now()
			if _, err := c.Write(b); err != nil {
				log.Fatal(err)
			}
			if _, err := io.ReadFull(c, b); err != nil {
				log.Fatal(err)
			}
			lat = append(lat, time.Since(s))
		}
		slices.Sort(lat)
		fmt.Fprintf(tw, "\t%v (%v)\t%v\t%v\t\n", idle, (idled / 2000).Round(time.Microsecond),
			lat[len(lat)/2].Round(100*time.Nanosecond), lat[len(lat)*9/10].Round(100*time.Nanosecond))
	}
	tw.Flush()
}
