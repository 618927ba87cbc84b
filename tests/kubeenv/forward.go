package main

import (
	"context"
	"fmt"
	"io"
	"net"
)

// forwardTCP accepts connections on listen and pipes each to target until ctx ends. It lets
// pods on the real nodes reach the apiserver, which listens on loopback only.
func forwardTCP(ctx context.Context, listen, target string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go pipe(conn, target)
		}
	}()
	return nil
}

func pipe(conn net.Conn, target string) {
	defer conn.Close()
	upstream, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer upstream.Close()
	// Whichever side ends first closes both (the deferred closes end the other copy).
	go func() {
		_, _ = io.Copy(upstream, conn)
		upstream.Close()
	}()
	_, _ = io.Copy(conn, upstream)
}
