package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/config"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// entryFileItem is one entry of `entry create --file`: the fields `entry
// list -o json` prints, so a listing can be registered again elsewhere. id,
// created_at and revision are accepted and ignored (the server sets them);
// any other unknown field is an error.
type entryFileItem struct {
	SPIFFEID      string           `yaml:"spiffe_id"`
	ParentID      string           `yaml:"parent_id"`
	Selectors     []string         `yaml:"selectors"`
	X509SVIDTTL   *config.Duration `yaml:"x509_svid_ttl"`
	JWTSVIDTTL    *config.Duration `yaml:"jwt_svid_ttl"`
	DNSNames      []string         `yaml:"dns_names"`
	Hint          string           `yaml:"hint"`
	Admin         bool             `yaml:"admin"`
	FederatesWith []string         `yaml:"federates_with"`
	ID            any              `yaml:"id"`
	CreatedAt     any              `yaml:"created_at"`
	Revision      any              `yaml:"revision"`
}

// readEntryFile reads a YAML or JSON list of entries ("-": standard input).
func readEntryFile(path string, stdin io.Reader) ([]*adminv1.Entry, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path) //nolint:gosec // the admin names the file to read
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var items []entryFileItem
	if err := dec.Decode(&items); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: no entries", path)
		}
		return nil, fmt.Errorf("%s: %w (want a list of entries: spiffe_id, parent_id, selectors, ...)", path, err)
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%s: no entries", path)
	}
	out := make([]*adminv1.Entry, len(items))
	for i, it := range items {
		e := &adminv1.Entry{SpiffeId: it.SPIFFEID, ParentId: it.ParentID, Selectors: it.Selectors, DnsNames: it.DNSNames,
			Hint: it.Hint, Admin: it.Admin, FederatesWith: it.FederatesWith}
		if it.X509SVIDTTL != nil {
			e.X509SvidTtlSeconds = int32(time.Duration(*it.X509SVIDTTL) / time.Second)
		}
		if it.JWTSVIDTTL != nil {
			e.JwtSvidTtlSeconds = int32(time.Duration(*it.JWTSVIDTTL) / time.Second)
		}
		out[i] = e
	}
	return out, nil
}

// entryBatchBytes keeps a batch call well under the admin API's 4 MiB
// message limit.
const entryBatchBytes = 2 << 20

// entryBatches splits entries into calls of at most api.MaxEntryBatch
// entries and entryBatchBytes bytes; it returns each batch's start index.
func entryBatches(entries []*adminv1.Entry) []int {
	starts := []int{0}
	size := 0
	for i, e := range entries {
		n := proto.Size(e) + 8
		if i > starts[len(starts)-1] && (i-starts[len(starts)-1] == api.MaxEntryBatch || size+n > entryBatchBytes) {
			starts = append(starts, i)
			size = 0
		}
		size += n
	}
	return starts
}

// createEntriesFromFile registers every entry of the file in batches and
// reports each refused one by its place in the file. Refusals make the
// command fail after all batches were sent: the entries that were valid are
// registered either way.
func createEntriesFromFile(ctx context.Context, cmd *cobra.Command, af *adminFlags, c *adminclient.Client, path string) error {
	entries, err := readEntryFile(path, cmd.InOrStdin())
	if err != nil {
		return err
	}
	type outcome struct {
		Index int            `json:"index"`
		Entry *adminv1.Entry `json:"-"`
		JSON  any            `json:"entry,omitempty"`
		Error string         `json:"error,omitempty"`
	}
	outcomes := make([]outcome, 0, len(entries))
	starts := append(entryBatches(entries), len(entries))
	refused := 0
	for b := 0; b+1 < len(starts); b++ {
		from, to := starts[b], starts[b+1]
		resp, err := c.BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: entries[from:to]})
		if err != nil {
			return fmt.Errorf("entries %d to %d (%d registered before them): %w", from, to-1, from-refused, err)
		}
		for k, r := range resp.GetResults() {
			o := outcome{Index: from + k, Entry: r.GetEntry()}
			if r.GetStatusCode() != 0 {
				// The server names the item by its place in the call;
				// say where it is in the file.
				o.Error = fmt.Sprintf("entry %d (%s): %s", from+k, entries[from+k].GetSpiffeId(), r.GetStatusMessage())
				refused++
			}
			outcomes = append(outcomes, o)
		}
	}
	w := cmd.OutOrStdout()
	if af.json() {
		for i := range outcomes {
			if outcomes[i].Entry != nil {
				if outcomes[i].JSON, err = readableJSON(outcomes[i].Entry); err != nil {
					return err
				}
			}
		}
		if err := writeJSON(w, outcomes); err != nil {
			return err
		}
	} else {
		for _, o := range outcomes {
			if o.Error != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), o.Error)
			}
		}
		fmt.Fprintf(w, "created %d of %d entries from %s\n", len(entries)-refused, len(entries), path)
	}
	if refused > 0 {
		return fmt.Errorf("%d of %d entries refused (listed above); the others are registered", refused, len(entries))
	}
	return nil
}
