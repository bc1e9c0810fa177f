package egress

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// RemoveTable deletes kordon's nftables table (default "kordon") from the
// current network namespace and the state file beside it, if any: what
// `kordon node --cleanup` runs on uninstall, when no Firewall is running.
// A table that does not exist is not an error.
func RemoveTable(table, stateFile string) error {
	if table == "" {
		table = "kordon"
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("egress: remove table %s: %w", table, err)
	}
	return removeState(stateFile)
}

// removeState deletes the state file at path, if path is set; a file
// that does not exist is not an error.
func removeState(path string) error {
	if path == "" {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("egress: remove state: %w", err)
	}
	return nil
}
