package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/shortleaf/shortleaf/pkg/datastore"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// DatastoreFile chooses where the server keeps its records: the bbolt file
// in data_dir (the default, for one server) or an etcd cluster (for several
// replicas sharing one trust domain).
type DatastoreFile struct {
	Type        string       `yaml:"type"`
	Endpoints   []string     `yaml:"endpoints"`
	Prefix      string       `yaml:"prefix"`
	TLS         *EtcdTLSFile `yaml:"tls"`
	DialTimeout Duration     `yaml:"dial_timeout"`
}

// EtcdTLSFile names the PEM files of TLS to etcd.
type EtcdTLSFile struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Datastore types.
const (
	DatastoreBolt = "bbolt"
	DatastoreEtcd = "etcd"
)

// resolve returns the etcd settings, or nil for the bbolt file.
func (d *DatastoreFile) resolve() (*datastore.EtcdConfig, error) {
	if d == nil {
		return nil, nil
	}
	switch d.Type {
	case "", DatastoreBolt:
		if len(d.Endpoints) > 0 || d.Prefix != "" || d.TLS != nil || d.DialTimeout != 0 {
			return nil, fieldErr("datastore", "endpoints, prefix, tls and dial_timeout are settings of type etcd; type is %q", orDefault(d.Type, DatastoreBolt))
		}
		return nil, nil
	case DatastoreEtcd:
	default:
		return nil, fieldErr("datastore.type", "%q is not bbolt or etcd", d.Type)
	}
	if len(d.Endpoints) == 0 {
		return nil, fieldErr("datastore.endpoints", "is required for type etcd (e.g. [https://etcd-1:2379, https://etcd-2:2379])")
	}
	cfg := &datastore.EtcdConfig{Prefix: d.Prefix, DialTimeout: time.Duration(d.DialTimeout)}
	for i, ep := range d.Endpoints {
		norm, err := etcdEndpoint(ep, d.TLS != nil)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("datastore.endpoints[%d]", i), "%v", err)
		}
		cfg.Endpoints = append(cfg.Endpoints, norm)
	}
	if d.Prefix != "" && (!strings.HasPrefix(d.Prefix, "/") || strings.ContainsAny(d.Prefix, "\x00\n")) {
		return nil, fieldErr("datastore.prefix", "%q must start with / (e.g. /shortleaf/example.org/)", d.Prefix)
	}
	if t := cfg.DialTimeout; t != 0 && (t < 100*time.Millisecond || t > 5*time.Minute) {
		return nil, fieldErr("datastore.dial_timeout", "%s is out of range (100ms to 5m)", t)
	}
	if t := d.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			return nil, fieldErr("datastore.tls", "cert_file and key_file go together (a client certificate needs both)")
		}
		for _, f := range []struct{ key, path string }{{"datastore.tls.ca_file", t.CAFile}, {"datastore.tls.cert_file", t.CertFile}} {
			if f.path == "" {
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				return nil, fieldErr(f.key, "%v", err)
			}
		}
		if t.KeyFile != "" {
			if err := safefile.CheckPrivateFile(t.KeyFile); err != nil {
				return nil, fieldErr("datastore.tls.key_file", "%v", err)
			}
		}
		cfg.CAFile, cfg.CertFile, cfg.KeyFile = t.CAFile, t.CertFile, t.KeyFile
	}
	return cfg, nil
}

// etcdEndpoint checks one endpoint: host:port, or an http(s) URL of one.
// With TLS configured a plain http:// endpoint is refused: it would send
// the datastore's records in the clear despite the TLS settings.
func etcdEndpoint(ep string, tlsSet bool) (string, error) {
	host := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return "", fmt.Errorf("%q is not host:port or an http(s)://host:port URL", ep)
		}
		if u.Scheme == "http" && tlsSet {
			return "", fmt.Errorf("%q is plain http while datastore.tls is set; use https://", ep)
		}
		host = u.Host
	}
	if _, port, err := net.SplitHostPort(host); err != nil || port == "" {
		return "", fmt.Errorf("%q has no port (etcd's client port is usually 2379)", ep)
	}
	if !strings.Contains(ep, "://") {
		scheme := "http://"
		if tlsSet {
			scheme = "https://"
		}
		return scheme + ep, nil
	}
	return strings.TrimSuffix(ep, "/"), nil
}
