package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/aftercare/aftercare/server/internal/problem"
)

// A DeviceCert is a certificate the device CA issued to a device.
type DeviceCert struct {
	Serial    string    `json:"serial"` // hex, lower case
	DeviceID  string    `json:"device_id"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	IssuedAt  time.Time `json:"issued_at"`
}

// A RevokedCert is a certificate of a revoked device, for the CRL.
type RevokedCert struct {
	Serial    string
	RevokedAt time.Time
}

func insertCert(ctx context.Context, q *txq, c DeviceCert) error {
	_, err := q.exec(ctx, `INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at) VALUES (?, ?, ?, ?, ?)`,
		c.Serial, c.DeviceID, formatTime(c.NotBefore), formatTime(c.NotAfter), formatTime(c.IssuedAt))
	return err
}

// AddDeviceCert records a renewed certificate of an enrolled device. A
// revoked or unknown device fails with problem.ErrUnauthorized and nothing
// is recorded.
func (s *Store) AddDeviceCert(ctx context.Context, c DeviceCert) error {
	return s.tx(ctx, func(q *txq) error {
		var revoked sql.NullString
		err := q.queryRow(ctx, `SELECT revoked_at FROM devices WHERE id = ?`, c.DeviceID).Scan(&revoked)
		if err == sql.ErrNoRows {
			return fmt.Errorf("device %q is not enrolled: %w", c.DeviceID, problem.ErrUnauthorized)
		}
		if err != nil {
			return err
		}
		if revoked.Valid {
			return fmt.Errorf("device %q was revoked at %s: %w", c.DeviceID, revoked.String, problem.ErrUnauthorized)
		}
		return insertCert(ctx, q, c)
	})
}

// CertifiedDevice returns the device that holds the certificate with the
// given serial, provided the certificate was issued to deviceID and the
// device is not revoked; otherwise it fails with problem.ErrUnauthorized.
func (s *Store) CertifiedDevice(ctx context.Context, deviceID, serial string) (Device, error) {
	d, err := scanDevice(s.direct().queryRow(ctx, `SELECT `+deviceColumns+` FROM devices d
		JOIN device_certs c ON c.device_id = d.id WHERE c.serial = ? AND d.id = ?`, serial, deviceID))
	if err == sql.ErrNoRows {
		return Device{}, fmt.Errorf("certificate %s was not issued to device %q: %w", serial, deviceID, problem.ErrUnauthorized)
	}
	if err != nil {
		return Device{}, err
	}
	if d.RevokedAt != nil {
		return Device{}, fmt.Errorf("device %q was revoked at %s: %w", deviceID, formatTime(*d.RevokedAt), problem.ErrUnauthorized)
	}
	return d, nil
}

// RevokeDevice marks a device revoked with a reason. Revoking a revoked
// device keeps the first time and reason.
func (s *Store) RevokeDevice(ctx context.Context, id, reason string, now time.Time) (Device, error) {
	if _, err := s.direct().exec(ctx, `UPDATE devices SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL`,
		formatTime(now), reason, id); err != nil {
		return Device{}, err
	}
	return s.Device(ctx, id)
}

// DeviceCerts returns the certificates issued to a device, oldest first.
func (s *Store) DeviceCerts(ctx context.Context, deviceID string) ([]DeviceCert, error) {
	rows, err := s.direct().query(ctx, `SELECT serial, device_id, not_before, not_after, issued_at FROM device_certs
		WHERE device_id = ? ORDER BY issued_at, serial`, deviceID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (DeviceCert, error) {
		var c DeviceCert
		var nb, na, ia string
		err := sc.Scan(&c.Serial, &c.DeviceID, &nb, &na, &ia)
		c.NotBefore, c.NotAfter, c.IssuedAt = parseTime(nb), parseTime(na), parseTime(ia)
		return c, err
	})
}

// RevokedCerts returns the certificates of revoked devices that have not
// expired at now: the entries of the CRL.
func (s *Store) RevokedCerts(ctx context.Context, now time.Time) ([]RevokedCert, error) {
	rows, err := s.direct().query(ctx, `SELECT c.serial, d.revoked_at FROM device_certs c JOIN devices d ON d.id = c.device_id
		WHERE d.revoked_at IS NOT NULL AND c.not_after > ? ORDER BY c.serial`, formatTime(now))
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (RevokedCert, error) {
		var r RevokedCert
		var at string
		err := sc.Scan(&r.Serial, &at)
		r.RevokedAt = parseTime(at)
		return r, err
	})
}
