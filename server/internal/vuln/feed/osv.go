package feed

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/package-url/packageurl-go"

	"github.com/aftercare/aftercare/server/internal/jsonpos"
)

// osvRecord is the part of the OSV schema (1.x) Aftercare reads.
type osvRecord struct {
	ID        string   `json:"id"`
	Modified  string   `json:"modified"`
	Published string   `json:"published"`
	Withdrawn string   `json:"withdrawn"`
	Aliases   []string `json:"aliases"`
	Related   []string `json:"related"`
	Summary   string   `json:"summary"`
	Details   string   `json:"details"`
	Severity  []struct {
		Type  string `json:"type"`
		Score string `json:"score"`
	} `json:"severity"`
	Affected []struct {
		Package struct {
			Ecosystem string `json:"ecosystem"`
			Name      string `json:"name"`
			PURL      string `json:"purl"`
		} `json:"package"`
		Ranges []struct {
			Type   string           `json:"type"`
			Events []map[string]any `json:"events"`
		} `json:"ranges"`
		Versions         []string        `json:"versions"`
		DatabaseSpecific json.RawMessage `json:"database_specific"`
	} `json:"affected"`
	DatabaseSpecific json.RawMessage `json:"database_specific"`
}

// ReadOSV reads OSV records from b: one JSON record, a JSON array of
// records, or a zip of JSON records (an ecosystem's all.zip). name is used
// in errors.
func ReadOSV(name string, b []byte, lim Limits) ([]Advisory, error) {
	lim = lim.withDefaults()
	if bytes.HasPrefix(b, []byte("PK\x03\x04")) {
		return readOSVZip(name, b, lim)
	}
	b, err := decompress(KindOSV, b, lim.MaxBytes)
	if err != nil {
		return nil, err
	}
	p := &problems{kind: KindOSV}
	trimmed := bytes.TrimSpace(b)
	var out []Advisory
	if bytes.HasPrefix(trimmed, []byte("[")) {
		var raws []json.RawMessage
		if err := json.Unmarshal(b, &raws); err != nil {
			return nil, invalidf(KindOSV, "%s: %s", name, jsonpos.Describe(err, b))
		}
		if len(raws) > lim.MaxRecords {
			return nil, invalidf(KindOSV, "%s: %d records; at most %d are allowed", name, len(raws), lim.MaxRecords)
		}
		for i, raw := range raws {
			if a, ok := parseOSV(p, fmt.Sprintf("%s[%d]", name, i), raw); ok {
				out = append(out, a)
			}
		}
	} else if a, ok := parseOSV(p, name, b); ok {
		out = append(out, a)
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return out, nil
}

func readOSVZip(name string, b []byte, lim Limits) ([]Advisory, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, invalidf(KindOSV, "%s: zip: %v (the file is truncated or not a zip)", name, err)
	}
	if len(zr.File) > lim.MaxRecords {
		return nil, invalidf(KindOSV, "%s: %d files; at most %d are allowed", name, len(zr.File), lim.MaxRecords)
	}
	p := &problems{kind: KindOSV}
	var out []Advisory
	var total int64
	for _, f := range zr.File {
		if f.FileInfo().IsDir() || !strings.EqualFold(path.Ext(f.Name), ".json") {
			continue
		}
		where := name + ":" + f.Name
		body, err := readZipFile(f, lim.MaxRecordBytes)
		if err != nil {
			p.add("%s: %v", where, err)
			continue
		}
		if total += int64(len(body)); total > lim.MaxBytes {
			return nil, invalidf(KindOSV, "%s decompresses to more than %d bytes", name, lim.MaxBytes)
		}
		if a, ok := parseOSV(p, where, body); ok {
			out = append(out, a)
		}
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return out, nil
}

func readZipFile(f *zip.File, max int64) ([]byte, error) {
	rc, err := f.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	body, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("read: %v (the zip is truncated or corrupt)", err)
	}
	if int64(len(body)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return body, nil
}

// parseOSV checks one record and converts it, adding its problems to p.
func parseOSV(p *problems, where string, b []byte) (Advisory, bool) {
	var r osvRecord
	if err := json.Unmarshal(b, &r); err != nil {
		p.add("%s: %s", where, jsonpos.Describe(err, b))
		return Advisory{}, false
	}
	before := len(p.list)
	if r.ID == "" {
		p.add("%s: id is missing; is this an OSV record?", where)
	}
	a := Advisory{ID: r.ID, Source: KindOSV, Summary: r.Summary, Withdrawn: r.Withdrawn != ""}
	if a.Summary == "" {
		a.Summary = firstLine(r.Details)
	}
	var err error
	if a.Modified, err = parseOSVTime(r.Modified); err != nil || r.Modified == "" {
		p.add("%s: modified %q is not an RFC 3339 time", where, r.Modified)
	}
	a.Published, _ = parseOSVTime(r.Published)
	a.CVEs = cvesOf(r.ID, r.Aliases)
	if len(a.CVEs) == 0 {
		// A distribution advisory (ALSA, DSA, ...) lists the CVEs it fixes
		// as related, not as aliases.
		a.CVEs = cvesOf("", r.Related)
	}
	a.Severity = osvSeverity(r.Summary, r.DatabaseSpecific)
	for i, af := range r.Affected {
		f := fmt.Sprintf("%s: affected[%d]", where, i)
		out := Affected{Ecosystem: af.Package.Ecosystem, Name: af.Package.Name, PURL: af.Package.PURL, Versions: af.Versions}
		if af.Package.PURL != "" {
			if _, err := packageurl.FromString(af.Package.PURL); err != nil {
				p.add("%s.package.purl %q: %v", f, af.Package.PURL, err)
			}
		}
		if (out.Ecosystem == "" || out.Name == "") && out.PURL == "" {
			p.add("%s.package: ecosystem and name (or purl) are required", f)
		}
		for j, rg := range af.Ranges {
			rf := fmt.Sprintf("%s.ranges[%d]", f, j)
			switch rg.Type {
			case "SEMVER", "ECOSYSTEM", "GIT":
			default:
				p.add("%s.type %q: must be SEMVER, ECOSYSTEM or GIT", rf, rg.Type)
			}
			if len(rg.Events) == 0 {
				p.add("%s.events: empty", rf)
			}
			out.Ranges = append(out.Ranges, Range{Type: rg.Type, Events: osvEvents(p, rf, rg.Events)})
		}
		a.Affected = append(a.Affected, out)
	}
	return a, len(p.list) == before
}

func osvEvents(p *problems, where string, events []map[string]any) []Event {
	var out []Event
	for k, ev := range events {
		if len(ev) != 1 {
			p.add("%s.events[%d]: must have exactly one of introduced, fixed, last_affected, limit", where, k)
			continue
		}
		for key, v := range ev {
			s, ok := v.(string)
			if !ok {
				p.add("%s.events[%d].%s: must be a string", where, k, key)
				continue
			}
			switch key {
			case "introduced":
				out = append(out, Event{Introduced: s})
			case "fixed":
				out = append(out, Event{Fixed: s})
			case "last_affected":
				out = append(out, Event{LastAffected: s})
			case "limit":
				out = append(out, Event{Limit: s})
			default:
				p.add("%s.events[%d]: unknown event %q", where, k, key)
			}
		}
	}
	return out
}

func parseOSVTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// osvSeverity reads the severity a record states in words: GitHub's
// database_specific.severity, or the Red Hat rating that AlmaLinux and
// Rocky put first in the summary ("Important: openssl security update").
func osvSeverity(summary string, dbSpecific json.RawMessage) string {
	var ds struct {
		Severity string `json:"severity"`
	}
	if len(dbSpecific) > 0 && json.Unmarshal(dbSpecific, &ds) == nil {
		if s := normalSeverity(ds.Severity); s != "" {
			return s
		}
	}
	if word, _, ok := strings.Cut(summary, ":"); ok {
		switch strings.ToLower(strings.TrimSpace(word)) {
		case "critical":
			return "critical"
		case "important":
			return "high"
		case "moderate":
			return "medium"
		case "low":
			return "low"
		}
	}
	return ""
}

// normalSeverity maps a severity word to critical, high, medium, low or
// none; "" when it is not one.
func normalSeverity(s string) string {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "critical":
		return "critical"
	case "high", "important":
		return "high"
	case "medium", "moderate":
		return "medium"
	case "low":
		return "low"
	case "none":
		return "none"
	}
	return ""
}

func cvesOf(id string, ids []string) []string {
	var out []string
	for _, s := range append([]string{id}, ids...) {
		s = strings.ToUpper(strings.TrimSpace(s))
		if ValidCVE(s) && !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// firstLine shortens a description to a one-line summary: whitespace
// collapsed, at most about 240 bytes, cut at a word.
func firstLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= 240 {
		return s
	}
	cut := strings.LastIndexByte(s[:240], ' ')
	if cut < 120 {
		cut = 240
	}
	return s[:cut] + " …"
}
