package rollout

import "context"

// TickReported is a scheduled step as Run takes it: with the devices
// passed to Reported since the last one.
func (e *Engine) TickReported(ctx context.Context) error {
	return e.tick(ctx, e.takeReported())
}
