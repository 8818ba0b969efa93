package server

import (
	"context"

	"github.com/aftercare/aftercare/server/internal/ingest"
)

// startIngest starts the security event ingester; the bridge feeds it.
// It stops when closeParts cancels it, after the bridge has disconnected,
// so nothing it had not committed was acknowledged.
//
// The returned function hands a message from a device's events topic to
// the ingester; it blocks while the ingester's queue is full, until the
// ingester stops. The bridge runs each message's handler in its own
// goroutine (paho with order not mattering), so under a slow database
// what waits is held in memory, bounded by the messages the broker lets
// the server's client hold unacknowledged (its inflight limit: 65,535 on
// the embedded broker), not pushed back on the broker.
func (s *Server) startIngest() (*ingest.Ingester, func(deviceID string, payload []byte, ack func()), error) {
	in, err := ingest.New(ingest.Options{Store: s.store, Log: s.log.With("component", "ingest")})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.Run(ctx)
	}()
	s.endIngest = func() {
		cancel()
		<-done
	}
	submit := func(deviceID string, payload []byte, ack func()) {
		in.Submit(ctx, ingest.Message{DeviceID: deviceID, Payload: payload, Ack: ack})
	}
	return in, submit, nil
}
