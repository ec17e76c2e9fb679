package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/shortleaf/shortleaf/pkg/config"
	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

func newDatastoreCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "datastore",
		Short: "Move the server's records between datastores",
	}
	cmd.AddCommand(newMigrateCommand())
	return cmd
}

// exporter and importer are the two ends of a migration.
type exporter interface {
	Export(ctx context.Context) (*datastore.Snapshot, error)
}

type importer interface {
	Import(ctx context.Context, snap *datastore.Snapshot) error
}

func newMigrateCommand() *cobra.Command {
	var from, to, configPath string
	cmd := &cobra.Command{
		Use:   "migrate --from bbolt --to etcd --config server.yaml",
		Short: "Copy every record from one datastore to the other, with the server stopped",
		Long: "Copies entries, agents, join tokens, the CA journal, federation relationships and foreign\n" +
			"bundles between the bbolt file in data_dir (<data_dir>/datastore.db) and the etcd cluster\n" +
			"of the config's datastore section (its endpoints, prefix and TLS), in either direction.\n" +
			"The server must be stopped: the data dir is locked while copying, and an etcd prefix a\n" +
			"server holds is refused. The target must be empty; the source is only read. CA keys are\n" +
			"not in the datastore: keys/ in data_dir (or the KMS) stays where it is. Afterwards, set\n" +
			"datastore.type in the config to the target and start the server; agents resync in full.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range []struct{ name, v string }{{"--from", from}, {"--to", to}} {
				if f.v != config.DatastoreBolt && f.v != config.DatastoreEtcd {
					return fmt.Errorf("%s: %q is not bbolt or etcd", f.name, f.v)
				}
			}
			if from == to {
				return fmt.Errorf("--from and --to are both %s", from)
			}
			cfg, err := config.LoadServerSettings(configPath)
			if err != nil {
				return err
			}
			if cfg.Etcd == nil {
				return fmt.Errorf("--config: %s has no datastore of type etcd; set its datastore section (type: etcd, endpoints, ...) to name the cluster first", configPath)
			}
			ctx := cmd.Context()
			unlock, err := safefile.LockDir(cfg.DataDir)
			if err != nil {
				return fmt.Errorf("data_dir %s: %w (stop the server first)", cfg.DataDir, err)
			}
			defer unlock()
			boltPath := filepath.Join(cfg.DataDir, "datastore.db")
			etcd, err := datastore.OpenEtcd(ctx, *cfg.Etcd)
			if err != nil {
				return err
			}
			defer etcd.Close()
			var src exporter
			var dst importer
			var srcName, dstName string
			etcdName := fmt.Sprintf("etcd %v under %s", cfg.Etcd.Endpoints, etcd.Prefix())
			if from == config.DatastoreBolt {
				if _, err := os.Stat(boltPath); errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("%s does not exist: nothing to migrate", boltPath)
				}
				bolt, err := datastore.Open(boltPath)
				if err != nil {
					return err
				}
				defer bolt.Close()
				src, dst, srcName, dstName = bolt, etcd, boltPath, etcdName
			} else {
				// No server may write the source while it is read.
				live, err := etcd.LiveReplicas(ctx)
				if err != nil {
					return err
				}
				if len(live) > 0 {
					return fmt.Errorf("%s: server replicas %s are running on it; stop them first", etcdName, strings.Join(live, ", "))
				}
				bolt, err := datastore.Open(boltPath)
				if err != nil {
					return err
				}
				defer bolt.Close()
				src, dst, srcName, dstName = etcd, bolt, etcdName, boltPath
			}
			snap, err := src.Export(ctx)
			if err != nil {
				return err
			}
			if err := dst.Import(ctx, snap); err != nil {
				return fmt.Errorf("%s: %w", dstName, err)
			}
			journal := "no CA journal (a CA that never started)"
			if snap.CAJournal != nil {
				journal = "the CA journal"
			}
			next := "start the server with " + configPath + " (datastore.type: etcd)"
			if to == config.DatastoreBolt {
				next = "remove the datastore section from " + configPath + " (bbolt is the default) and start the server"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "copied %d entries, %d agents, %d join tokens, %d federation relationships, %d foreign bundles and %s\nfrom %s\nto   %s\nnow %s\n",
				len(snap.Entries), len(snap.Agents), len(snap.JoinTokens), len(snap.Federations), len(snap.FederatedBundles), journal, srcName, dstName, next)
			return err
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the datastore to copy from: bbolt or etcd")
	cmd.Flags().StringVar(&to, "to", "", "the datastore to copy to: etcd or bbolt")
	cmd.Flags().StringVar(&configPath, "config", "server.yaml", "the server config: data_dir locates the bbolt file, datastore the etcd cluster")
	return cmd
}
