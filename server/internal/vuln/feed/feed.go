// Package feed reads vulnerability feeds from files, with no network: OSV
// records (one JSON record, or an ecosystem's all.zip), NVD CVE API 2.0 JSON
// (an API page, a yearly or "modified" feed file, or one bare CVE object,
// each plain or gzip), the CISA KEV catalog JSON, and the FIRST EPSS CSV
// (plain or gzip).
//
// Every reader checks the whole input before it returns anything: a
// truncated, oversized or wrong-format file gives an error that names the
// file, the record and the field, and no records, so an import built on it
// is all or nothing. Readers take plain bytes and return plain Go types; the
// vuln package stores them.
package feed

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Kinds of feed.
const (
	KindOSV  = "osv"
	KindNVD  = "nvd"
	KindKEV  = "kev"
	KindEPSS = "epss"
)

// Kinds lists every feed kind.
var Kinds = []string{KindOSV, KindNVD, KindKEV, KindEPSS}

// ErrInvalid is wrapped by every error about a feed's content.
var ErrInvalid = errors.New("feed: invalid")

// An InvalidError lists the problems found in a feed file.
// errors.Is(err, ErrInvalid) holds for it.
type InvalidError struct {
	Kind     string
	Problems []string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("invalid %s feed: %s", e.Kind, strings.Join(e.Problems, "; "))
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// problems collects at most maxProblems problems of one file.
type problems struct {
	kind string
	list []string
}

const maxProblems = 50

func (p *problems) add(format string, args ...any) {
	if len(p.list) == maxProblems {
		p.list = append(p.list, "further problems not listed")
	}
	if len(p.list) <= maxProblems {
		p.list = append(p.list, fmt.Sprintf(format, args...))
	}
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &InvalidError{Kind: p.kind, Problems: p.list}
}

func invalidf(kind, format string, args ...any) error {
	return &InvalidError{Kind: kind, Problems: []string{fmt.Sprintf(format, args...)}}
}

// Limits bound what a reader accepts.
type Limits struct {
	MaxBytes       int64 // the decompressed content, all records together; default 4 GiB
	MaxRecordBytes int64 // one OSV record in a zip; default 8 MiB
	MaxRecords     int   // default 2,000,000
}

// DefaultLimits are used for zero fields.
var DefaultLimits = Limits{MaxBytes: 4 << 30, MaxRecordBytes: 8 << 20, MaxRecords: 2_000_000}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultLimits.MaxBytes
	}
	if l.MaxRecordBytes <= 0 {
		l.MaxRecordBytes = DefaultLimits.MaxRecordBytes
	}
	if l.MaxRecords <= 0 {
		l.MaxRecords = DefaultLimits.MaxRecords
	}
	return l
}

// An Advisory is one vulnerability record: an OSV record or an NVD CVE.
type Advisory struct {
	ID        string     `json:"id"`     // "GO-2026-5025", "ALSA-2022:7106", "CVE-2023-0286"
	Source    string     `json:"source"` // KindOSV or KindNVD
	CVEs      []string   `json:"cves"`   // the CVE IDs it describes (its own ID for NVD)
	Summary   string     `json:"summary,omitempty"`
	Severity  string     `json:"severity,omitempty"` // critical, high, medium, low, none, or "" unknown
	CVSS      float64    `json:"cvss,omitempty"`     // base score, when the record gives one
	Published time.Time  `json:"published,omitzero"`
	Modified  time.Time  `json:"modified,omitzero"`
	Withdrawn bool       `json:"withdrawn,omitempty"`
	Affected  []Affected `json:"affected,omitempty"`       // OSV
	Configs   []Config   `json:"configurations,omitempty"` // NVD
}

// Affected is an OSV affected[] entry.
type Affected struct {
	Ecosystem string   `json:"ecosystem"` // as given, e.g. "Alpine:v3.16", "AlmaLinux:8", "Go"
	Name      string   `json:"name"`
	PURL      string   `json:"purl,omitempty"`
	Ranges    []Range  `json:"ranges,omitempty"`
	Versions  []string `json:"versions,omitempty"`
}

// A Range is an OSV range: type SEMVER, ECOSYSTEM or GIT, and its events.
type Range struct {
	Type   string  `json:"type"`
	Events []Event `json:"events"`
}

// An Event is one OSV range event; exactly one field is set.
type Event struct {
	Introduced   string `json:"introduced,omitempty"`
	Fixed        string `json:"fixed,omitempty"`
	LastAffected string `json:"last_affected,omitempty"`
	Limit        string `json:"limit,omitempty"`
}

// A Config is one NVD configuration: nodes joined by Operator (AND when a
// vulnerable product must run on a platform).
type Config struct {
	Operator string `json:"operator,omitempty"`
	Nodes    []Node `json:"nodes"`
}

// A Node is an NVD configuration node.
type Node struct {
	Operator string     `json:"operator"`
	Negate   bool       `json:"negate,omitempty"`
	Matches  []CPEMatch `json:"cpeMatch"`
}

// A CPEMatch is an NVD match criterion with its optional version range.
type CPEMatch struct {
	Vulnerable            bool   `json:"vulnerable"`
	Criteria              string `json:"criteria"`
	VersionStartIncluding string `json:"versionStartIncluding,omitempty"`
	VersionStartExcluding string `json:"versionStartExcluding,omitempty"`
	VersionEndIncluding   string `json:"versionEndIncluding,omitempty"`
	VersionEndExcluding   string `json:"versionEndExcluding,omitempty"`
}

// A KEV is one entry of CISA's Known Exploited Vulnerabilities catalog.
type KEV struct {
	CVE           string `json:"cve"`
	VendorProject string `json:"vendor_project"`
	Product       string `json:"product"`
	Name          string `json:"name"`
	DateAdded     string `json:"date_added"`     // YYYY-MM-DD
	DueDate       string `json:"due_date"`       // YYYY-MM-DD
	Ransomware    string `json:"ransomware_use"` // "Known" or "Unknown"
}

// A KEVCatalog is the whole KEV catalog.
type KEVCatalog struct {
	Version string
	Entries []KEV
}

// An EPSS score of one CVE.
type EPSS struct {
	CVE        string  `json:"cve"`
	Score      float64 `json:"score"`      // probability of exploitation in 30 days, 0..1
	Percentile float64 `json:"percentile"` // 0..1
}

// An EPSSSnapshot is one day's EPSS file.
type EPSSSnapshot struct {
	ModelVersion string
	ScoreDate    string
	Scores       []EPSS
}

var cveIDRE = regexp.MustCompile(`^CVE-\d{4}-\d{4,}$`)

// ValidCVE reports whether id is a CVE ID such as CVE-2023-0286.
func ValidCVE(id string) bool { return cveIDRE.MatchString(id) }

// decompress returns b, gunzipped when it starts with the gzip magic,
// bounded by max bytes.
func decompress(kind string, b []byte, max int64) ([]byte, error) {
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		if int64(len(b)) > max {
			return nil, invalidf(kind, "%d bytes; at most %d are allowed", len(b), max)
		}
		return b, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, invalidf(kind, "gzip: %v", err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, max+1))
	if err != nil {
		return nil, invalidf(kind, "gzip: %v (the file is truncated or corrupt)", err)
	}
	if int64(len(out)) > max {
		return nil, invalidf(kind, "decompresses to more than %d bytes", max)
	}
	return out, nil
}
