package store_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

func TestAssignmentsForTheRolloutRepository(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		mustSite(t, s, "s1", "Site One")
		var ids []string
		// More devices than one IN list holds.
		for i := range 1203 {
			id := fmt.Sprintf("d%04d", i)
			mustDevice(t, s, "s1", id, "1.0.0")
			ids = append(ids, id)
		}
		mustDevice(t, s, "s1", "unassigned", "1.0.0")
		r1 := mustRelease(t, s, "r1", "1.1.0")
		if got, err := s.AssignedDevices(ctx); err != nil || len(got) != 0 {
			t.Fatalf("AssignedDevices() before any rollout = %v, %v", got, err)
		}
		if err := s.CreateRollout(ctx, store.Rollout{ID: "ro1", ReleaseID: r1.ID, CreatedAt: t0, Devices: ids}); err != nil {
			t.Fatal(err)
		}
		got, err := s.AssignedDevices(ctx)
		slices.Sort(got)
		if err != nil || !slices.Equal(got, ids) {
			t.Fatalf("AssignedDevices() = %d ids, %v; want the %d assigned", len(got), err, len(ids))
		}
		as, err := s.AssignmentsOf(ctx, append(slices.Clone(ids), "unassigned", "no-such-device"))
		if err != nil || len(as) != len(ids) {
			t.Fatalf("AssignmentsOf() = %d rows, %v; want %d", len(as), err, len(ids))
		}
		for _, a := range as {
			if a.RolloutID != "ro1" || a.ReleaseID != r1.ID || a.TargetPath != r1.TargetPath {
				t.Fatalf("AssignmentsOf() row = %+v, want rollout ro1 of release %s at %s", a, r1.ID, r1.TargetPath)
			}
		}
	})
}
