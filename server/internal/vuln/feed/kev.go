package feed

import (
	"encoding/json"
	"time"

	"github.com/aftercare/aftercare/server/internal/jsonpos"
)

// ReadKEV reads CISA's Known Exploited Vulnerabilities catalog JSON, plain
// or gzip.
func ReadKEV(name string, b []byte, lim Limits) (*KEVCatalog, error) {
	lim = lim.withDefaults()
	b, err := decompress(KindKEV, b, lim.MaxBytes)
	if err != nil {
		return nil, err
	}
	var doc struct {
		CatalogVersion  string `json:"catalogVersion"`
		Count           *int   `json:"count"`
		Vulnerabilities *[]struct {
			CVEID                      string `json:"cveID"`
			VendorProject              string `json:"vendorProject"`
			Product                    string `json:"product"`
			VulnerabilityName          string `json:"vulnerabilityName"`
			DateAdded                  string `json:"dateAdded"`
			DueDate                    string `json:"dueDate"`
			KnownRansomwareCampaignUse string `json:"knownRansomwareCampaignUse"`
		} `json:"vulnerabilities"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, invalidf(KindKEV, "%s: %s", name, jsonpos.Describe(err, b))
	}
	if doc.CatalogVersion == "" || doc.Vulnerabilities == nil {
		return nil, invalidf(KindKEV, `%s: not the KEV catalog (it has "catalogVersion" and "vulnerabilities")`, name)
	}
	if doc.Count != nil && *doc.Count != len(*doc.Vulnerabilities) {
		return nil, invalidf(KindKEV, "%s: count says %d entries, the file has %d", name, *doc.Count, len(*doc.Vulnerabilities))
	}
	p := &problems{kind: KindKEV}
	cat := &KEVCatalog{Version: doc.CatalogVersion}
	for i, v := range *doc.Vulnerabilities {
		if !ValidCVE(v.CVEID) {
			p.add("%s: vulnerabilities[%d].cveID %q is not a CVE ID", name, i, v.CVEID)
		}
		if _, err := time.Parse(time.DateOnly, v.DateAdded); err != nil {
			p.add("%s: vulnerabilities[%d].dateAdded %q is not YYYY-MM-DD", name, i, v.DateAdded)
		}
		cat.Entries = append(cat.Entries, KEV{
			CVE: v.CVEID, VendorProject: v.VendorProject, Product: v.Product, Name: v.VulnerabilityName,
			DateAdded: v.DateAdded, DueDate: v.DueDate, Ransomware: v.KnownRansomwareCampaignUse,
		})
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	if len(cat.Entries) > lim.MaxRecords {
		return nil, invalidf(KindKEV, "%s: %d entries; at most %d are allowed", name, len(cat.Entries), lim.MaxRecords)
	}
	return cat, nil
}
