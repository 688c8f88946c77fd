package grpcx

import (
	"errors"
	"sync"

	"google.golang.org/grpc"
)

// ErrPoolClosed is returned by ConnPool.Get after Close.
var ErrPoolClosed = errors.New("grpc connection pool closed")

// ConnPool keeps one client connection per address. It is safe for
// concurrent use.
type ConnPool struct {
	opts   []grpc.DialOption
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// NewConnPool returns an empty pool whose connections are dialled with
// opts besides Dial's own (WithTLS, say).
func NewConnPool(opts ...grpc.DialOption) *ConnPool {
	return &ConnPool{opts: opts, conns: make(map[string]*grpc.ClientConn)}
}

// Get returns the connection to addr, creating it on first use.
func (p *ConnPool) Get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := Dial(addr, p.opts...)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

// Close closes every connection; Get fails afterwards.
func (p *ConnPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for addr, c := range p.conns {
		errs = append(errs, c.Close())
		delete(p.conns, addr)
	}
	return errors.Join(errs...)
}
