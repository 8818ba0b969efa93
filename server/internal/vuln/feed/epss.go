package feed

import (
	"bytes"
	"encoding/csv"
	"errors"
	"io"
	"strconv"
	"strings"
)

// ReadEPSS reads a FIRST EPSS scores CSV, plain or gzip: an optional
// "#model_version:...,score_date:..." line, the header "cve,epss,percentile",
// and one row per CVE.
func ReadEPSS(name string, b []byte, lim Limits) (*EPSSSnapshot, error) {
	lim = lim.withDefaults()
	b, err := decompress(KindEPSS, b, lim.MaxBytes)
	if err != nil {
		return nil, err
	}
	snap := &EPSSSnapshot{}
	skipped := 0 // lines before the CSV, for line numbers in errors
	if bytes.HasPrefix(b, []byte("#")) {
		skipped = 1
		line, rest, _ := bytes.Cut(b, []byte("\n"))
		for _, kv := range strings.Split(strings.TrimPrefix(strings.TrimSpace(string(line)), "#"), ",") {
			k, v, _ := strings.Cut(kv, ":")
			switch k {
			case "model_version":
				snap.ModelVersion = v
			case "score_date":
				snap.ScoreDate = v
			}
		}
		b = rest
	}
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = 3
	r.ReuseRecord = true
	header, err := r.Read()
	if err != nil {
		return nil, invalidf(KindEPSS, "%s: header: %v", name, err)
	}
	if strings.Join(header, ",") != "cve,epss,percentile" {
		return nil, invalidf(KindEPSS, `%s line %d: header %q, want "cve,epss,percentile"; is this an EPSS scores file?`, name, skipped+1, strings.Join(header, ","))
	}
	p := &problems{kind: KindEPSS}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// FieldPos is only valid after a successful Read; the
			// csv.ParseError names the line itself.
			p.add("%s: %v", name, err)
			break
		}
		line, _ := r.FieldPos(0)
		line += skipped
		e := EPSS{CVE: rec[0]}
		if !ValidCVE(e.CVE) {
			p.add("%s line %d: cve %q is not a CVE ID", name, line, rec[0])
		}
		if e.Score, err = strconv.ParseFloat(rec[1], 64); err != nil || e.Score < 0 || e.Score > 1 {
			p.add("%s line %d: epss %q must be a number from 0 to 1", name, line, rec[1])
		}
		if e.Percentile, err = strconv.ParseFloat(rec[2], 64); err != nil || e.Percentile < 0 || e.Percentile > 1 {
			p.add("%s line %d: percentile %q must be a number from 0 to 1", name, line, rec[2])
		}
		snap.Scores = append(snap.Scores, e)
		if len(snap.Scores) > lim.MaxRecords {
			return nil, invalidf(KindEPSS, "%s: more than %d rows", name, lim.MaxRecords)
		}
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	if len(snap.Scores) == 0 {
		return nil, invalidf(KindEPSS, "%s: no scores after the header", name)
	}
	return snap, nil
}
