// Package confload fills a binary's Config struct from a YAML file and
// AFTERCARE_* environment variables, in that order, and holds the Secret
// type for credentials in configuration. Each binary keeps its own Config,
// defaults, flags and Validate; this package only does the loading they
// share.
package confload

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"

	"github.com/caarlos0/env/v11"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes every environment variable a Config reads.
const EnvPrefix = "AFTERCARE_"

// maxFileBytes bounds a configuration file.
const maxFileBytes = 1 << 20 // 1 MiB

// A Secret is a credential read from configuration. It never prints its
// value; only the code that sends the credential calls string(s).
type Secret string

// String returns REDACTED, never the secret.
func (Secret) String() string { return "REDACTED" }

// LogValue returns REDACTED, never the secret.
func (Secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// MarshalYAML keeps secrets out of printed configurations.
func (s Secret) MarshalYAML() (any, error) {
	if s == "" {
		return "", nil
	}
	return "REDACTED", nil
}

// File decodes the YAML file at path into dst, which must be a pointer to a
// struct with yaml tags. Unknown keys are errors, so a typo is not ignored.
func File(dst any, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if len(b) > maxFileBytes {
		return fmt.Errorf("config file %s is larger than %d bytes", path, maxFileBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// Env overrides fields of dst from AFTERCARE_* variables named by their env
// tags, reading the environment only through getenv.
func Env(dst any, getenv func(string) string) error {
	params, err := env.GetFieldParams(dst)
	if err != nil {
		return err
	}
	m := map[string]string{}
	var errs []error
	for _, p := range params {
		name := EnvPrefix + p.Key
		v := getenv(name)
		if v == "" {
			continue
		}
		m[name] = v
		// Parse each variable alone into a scratch value, so an error can
		// name the variable the user set. The value is not repeated: it
		// may be a secret.
		scratch := reflect.New(reflect.TypeOf(dst).Elem()).Interface()
		if err := env.ParseWithOptions(scratch, env.Options{Prefix: EnvPrefix, Environment: map[string]string{name: v}}); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s: %w", name, unwrapParse(err)))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return env.ParseWithOptions(dst, env.Options{Prefix: EnvPrefix, Environment: m})
}

// unwrapParse digs the cause out of the env library's aggregate error.
func unwrapParse(err error) error {
	var agg env.AggregateError
	if errors.As(err, &agg) && len(agg.Errors) > 0 {
		err = agg.Errors[0]
	}
	var pe env.ParseError
	if errors.As(err, &pe) && pe.Err != nil {
		return pe.Err
	}
	return err
}
