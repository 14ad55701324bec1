// Go's TLS handshake floor, the peer of the "Python's floor" line of bench/probe_cost.py.
//
// Usage: go run bench/handshake_floor.go HOST:PORT COUNT CA_FILE
//
// Makes COUNT TLS handshakes (20 goroutines, SNI localhost, ALPN h2 and
// http/1.1, verification against CA_FILE, no session cache, so every one is
// full) and prints the CPU time of this process per handshake. Build it with
// the Go that built blackbox_exporter (Debian: go1.19, package golang-go).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
)

func cpuSeconds() float64 {
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: handshake_floor HOST:PORT COUNT CA_FILE")
		os.Exit(2)
	}
	total, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "COUNT:", err)
		os.Exit(2)
	}
	pem, err := os.ReadFile(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "CA_FILE:", err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	config := &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2", "http/1.1"}}
	left := int64(total)
	start := cpuSeconds()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&left, -1) >= 0 {
				conn, err := tls.Dial("tcp", os.Args[1], config)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				conn.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%.3f CPU s / 1000 handshakes (%s)\n", (cpuSeconds()-start)/float64(total)*1000, runtime.Version())
}
