package firmware

import "fmt"

// A Slot names one of a device's two system partitions.
type Slot string

// The two slots of an A/B device.
const (
	SlotA Slot = "a"
	SlotB Slot = "b"
)

// Other returns the slot that is not s.
func (s Slot) Other() Slot {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// Valid reports whether s is SlotA or SlotB.
func (s Slot) Valid() bool { return s == SlotA || s == SlotB }

// ParseSlot accepts "a" or "b" in either case.
func ParseSlot(s string) (Slot, error) {
	switch s {
	case "a", "A":
		return SlotA, nil
	case "b", "B":
		return SlotB, nil
	}
	return "", fmt.Errorf("slot %q is not a or b", s)
}
