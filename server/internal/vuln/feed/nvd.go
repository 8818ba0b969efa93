package feed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/aftercare/aftercare/server/internal/jsonpos"
	"github.com/aftercare/aftercare/server/internal/sbom"
)

// nvdCVE is the part of an NVD API 2.0 "cve" object Aftercare reads.
type nvdCVE struct {
	ID           string `json:"id"`
	Published    string `json:"published"`
	LastModified string `json:"lastModified"`
	VulnStatus   string `json:"vulnStatus"`
	Descriptions []struct {
		Lang  string `json:"lang"`
		Value string `json:"value"`
	} `json:"descriptions"`
	Metrics        map[string][]nvdMetric `json:"metrics"`
	Configurations []Config               `json:"configurations"`
}

type nvdMetric struct {
	Type     string `json:"type"`
	CVSSData struct {
		BaseScore    float64 `json:"baseScore"`
		BaseSeverity string  `json:"baseSeverity"`
	} `json:"cvssData"`
	BaseSeverity string `json:"baseSeverity"` // CVSS v2 keeps it here
}

// nvdTimeLayout is how NVD writes times (no zone; UTC).
const nvdTimeLayout = "2006-01-02T15:04:05.999"

// parseNVDTime reads NVD's zone-less UTC times, and RFC 3339 ones that
// some mirrors write.
func parseNVDTime(s string) (time.Time, error) {
	if t, err := time.Parse(nvdTimeLayout, s); err == nil {
		return t, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// ReadNVD reads NVD CVE API 2.0 JSON: an API response page or a feed file
// ({"vulnerabilities": [{"cve": {...}}]}), or one bare CVE object, plain or
// gzip. name is used in errors.
func ReadNVD(name string, b []byte, lim Limits) ([]Advisory, error) {
	lim = lim.withDefaults()
	b, err := decompress(KindNVD, b, lim.MaxBytes)
	if err != nil {
		return nil, err
	}
	var probe struct {
		ID              *string `json:"id"`
		Vulnerabilities *[]struct {
			CVE json.RawMessage `json:"cve"`
		} `json:"vulnerabilities"`
		Format string `json:"format"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, invalidf(KindNVD, "%s: %s", name, jsonpos.Describe(err, b))
	}
	p := &problems{kind: KindNVD}
	var out []Advisory
	switch {
	case probe.Vulnerabilities != nil:
		if probe.Format != "" && probe.Format != "NVD_CVE" {
			return nil, invalidf(KindNVD, "%s: format %q, want NVD_CVE (NVD CVE API 2.0)", name, probe.Format)
		}
		if len(*probe.Vulnerabilities) > lim.MaxRecords {
			return nil, invalidf(KindNVD, "%s: %d records; at most %d are allowed", name, len(*probe.Vulnerabilities), lim.MaxRecords)
		}
		if vs := *probe.Vulnerabilities; len(vs) > 0 && len(vs[0].CVE) == 0 {
			return nil, invalidf(KindNVD, `%s: vulnerabilities[0] has no "cve" object; is this an NVD CVE API 2.0 file?`, name)
		}
		for i, v := range *probe.Vulnerabilities {
			where := fmt.Sprintf("%s: vulnerabilities[%d].cve", name, i)
			if len(v.CVE) == 0 {
				p.add("%s: missing", where)
				continue
			}
			if a, ok := parseNVD(p, where, v.CVE); ok {
				out = append(out, a)
			}
		}
	case probe.ID != nil:
		if a, ok := parseNVD(p, name, b); ok {
			out = append(out, a)
		}
	default:
		return nil, invalidf(KindNVD, `%s: neither an NVD API 2.0 page ("vulnerabilities": [...]) nor a CVE object ("id": "CVE-...")`, name)
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return out, nil
}

func parseNVD(p *problems, where string, b []byte) (Advisory, bool) {
	var c nvdCVE
	if err := json.Unmarshal(b, &c); err != nil {
		p.add("%s: %s", where, jsonpos.Describe(err, bytes.TrimSpace(b)))
		return Advisory{}, false
	}
	before := len(p.list)
	if !ValidCVE(c.ID) {
		p.add("%s.id %q is not a CVE ID", where, c.ID)
	}
	a := Advisory{ID: c.ID, Source: KindNVD, CVEs: []string{c.ID}, Withdrawn: c.VulnStatus == "Rejected", Configs: c.Configurations}
	var err error
	if a.Modified, err = parseNVDTime(c.LastModified); err != nil {
		p.add("%s.lastModified %q is not an NVD time (2006-01-02T15:04:05.000)", where, c.LastModified)
	}
	a.Published, _ = parseNVDTime(c.Published)
	for _, d := range c.Descriptions {
		if d.Lang == "en" {
			a.Summary = firstLine(d.Value)
			break
		}
	}
	a.Severity, a.CVSS = nvdSeverity(c.Metrics)
	for i, cfg := range c.Configurations {
		for j, n := range cfg.Nodes {
			for k, m := range n.Matches {
				if err := sbom.ValidCPE(m.Criteria); err != nil {
					p.add("%s.configurations[%d].nodes[%d].cpeMatch[%d].criteria %q: %v", where, i, j, k, m.Criteria, err)
				}
			}
		}
	}
	return a, len(p.list) == before
}

// nvdSeverity takes the newest CVSS version present, preferring NVD's own
// (Primary) score.
func nvdSeverity(metrics map[string][]nvdMetric) (string, float64) {
	for _, key := range []string{"cvssMetricV40", "cvssMetricV31", "cvssMetricV30", "cvssMetricV2"} {
		ms := metrics[key]
		if len(ms) == 0 {
			continue
		}
		m := ms[0]
		for _, cand := range ms {
			if strings.EqualFold(cand.Type, "Primary") {
				m = cand
				break
			}
		}
		sev := m.CVSSData.BaseSeverity
		if sev == "" {
			sev = m.BaseSeverity
		}
		return normalSeverity(sev), m.CVSSData.BaseScore
	}
	return "", 0
}
