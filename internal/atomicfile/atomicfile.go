// Package atomicfile replaces files so that a crash or power cut at any
// instant leaves either the old contents or the new, never a mix or an empty
// file: write a temporary file in the same directory, fsync it, rename it
// over the target, then fsync the directory so the rename itself is durable.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile atomically replaces path with data, creating it with perm.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	if err := replace(path, data, perm); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteFiles atomically replaces each file of dir named in files with its
// data, then syncs dir once: after it returns every file is durable, and a
// crash before that leaves each file either old or new. Use it for many
// files that become visible together only through a later commit point.
func WriteFiles(dir string, files map[string][]byte, perm os.FileMode) error {
	for name, data := range files {
		if err := replace(filepath.Join(dir, name), data, perm); err != nil {
			return err
		}
	}
	return SyncDir(dir)
}

// replace writes a temporary file next to path, syncs it and renames it
// over path, without syncing the directory.
func replace(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	return nil
}

// Rename moves an already synced file from oldpath to newpath and makes the
// move durable by syncing newpath's directory.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(newpath))
}

// SyncDir fsyncs a directory so that entries created, renamed or removed in
// it survive a power cut.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
