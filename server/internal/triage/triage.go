// Package triage decides which findings need a human decision and by when,
// and delivers the notifications that say so.
//
// A Policy opens a triage item for a vulnerability of a product line when a
// finding is open (no backport evidence, no decision yet) and is in CISA's
// KEV catalog, has severity critical or high, or an EPSS score at or above
// the threshold. The item is due after the shortest SLA of the reasons that
// apply (e.g. KEV or critical: 2 days). A Notifier sends queued
// notifications by webhook and by email (SMTP), from the store's outbox, so
// a failed delivery is retried and a restart loses nothing.
package triage

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Reasons a triage item is opened; also the keys of Policy.SLA.
const (
	ReasonKEV      = "kev"
	ReasonCritical = "critical"
	ReasonHigh     = "high"
	ReasonEPSS     = "epss"
)

// A Policy says which findings open a triage item and how long triage may
// take.
type Policy struct {
	// SLA is the time to triage per reason; every reason needs one.
	SLA map[string]time.Duration
	// EPSSThreshold opens an item for an EPSS score at or above it (0..1);
	// 0 disables the EPSS reason.
	EPSSThreshold float64
}

// DefaultPolicy: KEV and critical within 2 days, high within 7, EPSS >= 0.5
// within 7.
func DefaultPolicy() Policy {
	return Policy{
		SLA: map[string]time.Duration{
			ReasonKEV: 48 * time.Hour, ReasonCritical: 48 * time.Hour,
			ReasonHigh: 7 * 24 * time.Hour, ReasonEPSS: 7 * 24 * time.Hour,
		},
		EPSSThreshold: 0.5,
	}
}

// Validate reports every problem with p, naming the configuration keys.
func (p Policy) Validate() error {
	var errs []error
	for _, r := range []string{ReasonKEV, ReasonCritical, ReasonHigh, ReasonEPSS} {
		if d, ok := p.SLA[r]; !ok || d <= 0 {
			errs = append(errs, fmt.Errorf("vuln.sla.%s %s must be a positive duration such as 48h", r, d))
		}
	}
	for r := range p.SLA {
		if !slices.Contains([]string{ReasonKEV, ReasonCritical, ReasonHigh, ReasonEPSS}, r) {
			errs = append(errs, fmt.Errorf("vuln.sla.%s: unknown; the keys are kev, critical, high and epss", r))
		}
	}
	if p.EPSSThreshold < 0 || p.EPSSThreshold > 1 {
		errs = append(errs, fmt.Errorf("vuln.epss_threshold %v must be from 0 to 1", p.EPSSThreshold))
	}
	return errors.Join(errs...)
}

// Evaluate returns why a finding with this severity, KEV status and EPSS
// score needs triage, and how long triage may take; no reasons means none.
func (p Policy) Evaluate(severity string, kev bool, epss float64) (reasons []string, sla time.Duration) {
	if kev {
		reasons = append(reasons, ReasonKEV)
	}
	switch severity {
	case "critical":
		reasons = append(reasons, ReasonCritical)
	case "high":
		reasons = append(reasons, ReasonHigh)
	}
	if p.EPSSThreshold > 0 && epss >= p.EPSSThreshold {
		reasons = append(reasons, ReasonEPSS)
	}
	for i, r := range reasons {
		if d := p.SLA[r]; i == 0 || d < sla {
			sla = d
		}
	}
	return reasons, sla
}
