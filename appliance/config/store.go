package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Store keeps a daemon's configuration in files named from its config file: the file itself
// holds the device-local part, FILE.d/shared.toml the shared part. Two daemons whose config
// files sit in one folder therefore never share a file.
type Store struct {
	Path string
}

// SharedPath is the file that holds the shared part.
func (s Store) SharedPath() string { return s.Path + ".d/shared.toml" }

// StateDir is the folder for the daemon's other files.
func (s Store) StateDir() string { return s.Path + ".d" }

// Load reads the configuration. Missing files give the unconfigured defaults for device, so
// a first start needs no file; a device name given on the command line wins over the file's.
func (s Store) Load(device string) (Config, error) {
	c := New(device)
	if data, err := os.ReadFile(s.Path); err == nil {
		if c.Local, err = DecodeLocal(data); err != nil {
			return Config{}, fmt.Errorf("load %s: %w", s.Path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	if device != "" {
		c.Local.Device.Name = device
	}
	if data, err := os.ReadFile(s.SharedPath()); err == nil {
		if c.Shared, err = DecodeShared(data); err != nil {
			return Config{}, fmt.Errorf("load %s: %w", s.SharedPath(), err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", s.Path, err)
	}
	return c, nil
}

// Save writes both parts, each atomically (temporary file, fsync, rename, fsync of the folder).
func (s Store) Save(c Config) error {
	shared, err := EncodeShared(c.Shared)
	if err != nil {
		return err
	}
	local, err := EncodeLocal(c.Local)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.StateDir(), 0o750); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := WriteFileAtomic(s.SharedPath(), shared, 0o640); err != nil {
		return fmt.Errorf("save shared config: %w", err)
	}
	if err := WriteFileAtomic(s.Path, local, 0o640); err != nil {
		return fmt.Errorf("save device config: %w", err)
	}
	return nil
}

// WriteFileAtomic replaces path with data so that a reader sees the old or the new file,
// never a part, even across a crash.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync folder: %w", path, err)
	}
	return nil
}

// EncodeShared renders the shared part as TOML, the form config sync carries.
func EncodeShared(s Shared) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Shared configuration: carried to the peer by config sync. Edit with tmsh.\n")
	if err := toml.NewEncoder(&buf).Encode(s); err != nil {
		return nil, fmt.Errorf("encode shared config: %w", err)
	}
	return buf.Bytes(), nil
}

// EncodeLocal renders the device-local part as TOML.
func EncodeLocal(l Local) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Device-local configuration: never carried by config sync. Edit with tmsh.\n")
	if err := toml.NewEncoder(&buf).Encode(l); err != nil {
		return nil, fmt.Errorf("encode device config: %w", err)
	}
	return buf.Bytes(), nil
}

// DecodeShared parses the shared part; unknown keys are an error, not silently dropped.
func DecodeShared(data []byte) (Shared, error) {
	var s Shared
	md, err := toml.Decode(string(data), &s)
	if err != nil {
		return Shared{}, fmt.Errorf("decode shared config: %w", err)
	}
	if err := undecoded(md); err != nil {
		return Shared{}, fmt.Errorf("decode shared config: %w", err)
	}
	return s, nil
}

// DecodeLocal parses the device-local part; unknown keys are an error.
func DecodeLocal(data []byte) (Local, error) {
	var l Local
	md, err := toml.Decode(string(data), &l)
	if err != nil {
		return Local{}, fmt.Errorf("decode device config: %w", err)
	}
	if err := undecoded(md); err != nil {
		return Local{}, fmt.Errorf("decode device config: %w", err)
	}
	return l, nil
}

func undecoded(md toml.MetaData) error {
	keys := md.Undecoded()
	if len(keys) == 0 {
		return nil
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.String()
	}
	sort.Strings(names)
	return fmt.Errorf("%w: unknown keys %s", ErrInvalid, strings.Join(names, ", "))
}

// Digest identifies the shared configuration's content: equal digests mean in sync.
func Digest(s Shared) string {
	data, err := EncodeShared(s)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}
