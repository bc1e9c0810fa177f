package xds

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// BootstrapConfig describes a proxyless gRPC workload's xDS bootstrap
// (GRPC_XDS_BOOTSTRAP_CONFIG / GRPC_XDS_BOOTSTRAP).
type BootstrapConfig struct {
	// ServerURI is the kordon xDS server, host:port.
	ServerURI string
	// NodeID is "<namespace>/<pod>".
	NodeID string
	// CertFile, KeyFile and CAFile are the workload's SVID, key and trust
	// bundle (PEM). They are used both for the xDS connection (mTLS) and,
	// through the file_watcher certificate provider, for the workload's
	// own traffic.
	CertFile, KeyFile, CAFile string
	// XDSCAFile verifies the xDS server's certificate (default CAFile):
	// the controller's serving certificate may come from another PKI than
	// the SVIDs.
	XDSCAFile string
	// BundleMapFile, when set, is a SPIFFE trust bundle map used instead of
	// CAFile for the workload's traffic (several trust domains; needs
	// GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true in the workload).
	BundleMapFile string
	// RefreshInterval is how often the certificate files are re-read
	// (rotation). Default 10s.
	RefreshInterval time.Duration
	// InsecureXDS connects to the xDS server without TLS (loopback dev
	// mode with AllowUnauthenticated only).
	InsecureXDS bool
	// CertProviderInstance defaults to DefaultCertProviderInstance.
	CertProviderInstance string
}

// ProxylessBootstrap renders the grpc-go bootstrap JSON for c.
func ProxylessBootstrap(c BootstrapConfig) ([]byte, error) {
	if c.ServerURI == "" || c.NodeID == "" {
		return nil, errors.New("xds: bootstrap needs a server URI and a node id")
	}
	if c.CertFile == "" || c.KeyFile == "" || (c.CAFile == "" && c.BundleMapFile == "") {
		return nil, errors.New("xds: bootstrap needs certificate, key and CA (or bundle map) files")
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = 10 * time.Second
	}
	if c.CertProviderInstance == "" {
		c.CertProviderInstance = DefaultCertProviderInstance
	}
	type obj = map[string]any
	creds := []obj{{"type": "insecure"}}
	if !c.InsecureXDS {
		xdsCA := c.XDSCAFile
		if xdsCA == "" {
			xdsCA = c.CAFile
		}
		if xdsCA == "" {
			return nil, errors.New("xds: an mTLS xDS connection needs CAFile or XDSCAFile")
		}
		creds = []obj{{"type": "tls", "config": obj{
			"ca_certificate_file": xdsCA,
			"certificate_file":    c.CertFile,
			"private_key_file":    c.KeyFile,
			"refresh_interval":    durationJSON(c.RefreshInterval),
		}}}
	}
	watcher := obj{
		"certificate_file": c.CertFile,
		"private_key_file": c.KeyFile,
		"refresh_interval": durationJSON(c.RefreshInterval),
	}
	if c.CAFile != "" {
		watcher["ca_certificate_file"] = c.CAFile
	}
	if c.BundleMapFile != "" {
		watcher["spiffe_trust_bundle_map_file"] = c.BundleMapFile
	}
	doc := obj{
		"xds_servers": []obj{{
			"server_uri":      c.ServerURI,
			"channel_creds":   creds,
			"server_features": []string{"xds_v3"},
		}},
		"node": obj{"id": c.NodeID, "metadata": obj{ProxyMetadataKey: string(KindProxyless)}},
		"certificate_providers": obj{
			c.CertProviderInstance: obj{"plugin_name": "file_watcher", "config": watcher},
		},
		"server_listener_resource_name_template": ServerListenerPrefix + "%s",
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("xds: bootstrap: %w", err)
	}
	return b, nil
}

func durationJSON(d time.Duration) string {
	return fmt.Sprintf("%.3fs", d.Seconds())
}
