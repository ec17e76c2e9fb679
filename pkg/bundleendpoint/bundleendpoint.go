// Package bundleendpoint serves the trust domain's SPIFFE bundle over HTTPS
// for other trust domains and verifiers (SPIFFE Federation), with either
// profile: https_spiffe (the server authenticates with its own SVID) or
// https_web (a configured Web PKI certificate).
//
// GET on any path returns the newest bundle as a JWK Set: X.509 roots with
// use x509-svid, JWT keys with use jwt-svid and kid, spiffe_sequence and
// spiffe_refresh_hint. No client authentication is asked for.
package bundleendpoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Profiles of a bundle endpoint.
const (
	ProfileSPIFFE = "https_spiffe"
	ProfileWeb    = "https_web"
)

// Config configures the endpoint.
type Config struct {
	Addr        string
	TrustDomain spiffeid.TrustDomain
	// Bundle returns the bundle to serve, built fresh on every request.
	Bundle func() *spiffebundle.Bundle
	// Certificate returns the TLS certificate: the server's SVID for
	// https_spiffe, the Web PKI certificate for https_web.
	Certificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// CRLs, if set, returns the CA's CRLs, served at /crl (all, PEM) and
	// /crl/<issuer key ID>.crl (one, DER).
	CRLs func() ([]*x509.RevocationList, error)
	// Logger receives connection errors (failed handshakes) at debug level.
	Logger *slog.Logger
}

// aeadSuites are the TLS 1.2 suites the endpoint accepts: forward-secret
// ECDHE with AEAD ciphers only (TLS 1.3 suites are not configurable and are
// all AEAD).
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Server is a listening bundle endpoint.
type Server struct {
	lis net.Listener
	srv *http.Server
}

type source func() *spiffebundle.Bundle

func (s source) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	b := s()
	if b.TrustDomain() != td {
		return nil, fmt.Errorf("bundleendpoint: no bundle for %s", td)
	}
	return b, nil
}

// New listens on cfg.Addr; Run serves.
func New(cfg Config) (*Server, error) {
	bundleHandler, err := federation.NewHandler(cfg.TrustDomain, source(cfg.Bundle))
	if err != nil {
		return nil, fmt.Errorf("bundleendpoint: %w", err)
	}
	handler := http.NewServeMux()
	handler.Handle("/", bundleHandler)
	if cfg.CRLs != nil {
		handler.Handle("GET /crl", crlHandler(cfg.CRLs, ""))
		handler.Handle("GET /crl/{file}", crlHandler(cfg.CRLs, "file"))
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("bundleendpoint: listen: %w", err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cfg.Certificate, CipherSuites: aeadSuites}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		lis: tls.NewListener(lis, tlsCfg),
		srv: &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)},
	}, nil
}

// Addr is the listening address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Run serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		// ctx is done by now; the shutdown gets its own short deadline.
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(shutdown)
	})
	defer stop()
	if err := s.srv.Serve(s.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("bundleendpoint: %w", err)
	}
	return nil
}

// Close stops listening.
func (s *Server) Close() error { return s.srv.Close() }

// LoadWebCertificate loads an https_web certificate and key.
func LoadWebCertificate(certFile, keyFile string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("bundleendpoint: web certificate: %w", err)
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, nil
}

// crlHandler serves every CRL as PEM, or with fileParam the one whose
// issuer key ID (hex) names the file "<key id>.crl", as DER.
func crlHandler(crls func() ([]*x509.RevocationList, error), fileParam string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		list, err := crls()
		if err != nil {
			http.Error(w, "CRLs are unavailable", http.StatusServiceUnavailable)
			return
		}
		if fileParam == "" {
			w.Header().Set("Content-Type", "application/x-pem-file")
			for _, crl := range list {
				_ = pem.Encode(w, &pem.Block{Type: "X509 CRL", Bytes: crl.Raw})
			}
			return
		}
		keyID, ok := strings.CutSuffix(r.PathValue(fileParam), ".crl")
		for _, crl := range list {
			if ok && hex.EncodeToString(crl.AuthorityKeyId) == strings.ToLower(keyID) {
				w.Header().Set("Content-Type", "application/pkix-crl")
				_, _ = w.Write(crl.Raw)
				return
			}
		}
		http.NotFound(w, r)
	})
}
