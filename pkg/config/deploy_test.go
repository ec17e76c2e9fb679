package config_test

import (
	"bytes"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/config"
)

// manifests holds every object of docs/deploy/kubernetes, decoded strictly
// into its k8s.io/api type: a misspelt or misplaced field fails the test.
type manifests struct {
	serviceAccounts map[string]*corev1.ServiceAccount
	configMaps      map[string]*corev1.ConfigMap
	services        map[string]*corev1.Service
	clusterRoles    map[string]*rbacv1.ClusterRole
	bindings        []*rbacv1.ClusterRoleBinding
	statefulSets    []*appsv1.StatefulSet
	daemonSets      []*appsv1.DaemonSet
	namespaces      []string
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{serviceAccounts: map[string]*corev1.ServiceAccount{}, configMaps: map[string]*corev1.ConfigMap{},
		services: map[string]*corev1.Service{}, clusterRoles: map[string]*rbacv1.ClusterRole{}}
	files, _ := filepath.Glob("../../docs/deploy/kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in docs/deploy/kubernetes")
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			where := filepath.Base(file) + " document " + strconv.Itoa(i)
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			decode := func(into any) {
				if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
					t.Fatalf("%s (%s): %v", where, meta.Kind, err)
				}
			}
			switch meta.Kind {
			case "Namespace":
				var o corev1.Namespace
				decode(&o)
				m.namespaces = append(m.namespaces, o.Name)
			case "ServiceAccount":
				var o corev1.ServiceAccount
				decode(&o)
				m.serviceAccounts[o.Namespace+"/"+o.Name] = &o
			case "ConfigMap":
				var o corev1.ConfigMap
				decode(&o)
				m.configMaps[o.Namespace+"/"+o.Name] = &o
			case "Service":
				var o corev1.Service
				decode(&o)
				m.services[o.Namespace+"/"+o.Name] = &o
			case "ClusterRole":
				var o rbacv1.ClusterRole
				decode(&o)
				m.clusterRoles[o.Name] = &o
			case "ClusterRoleBinding":
				var o rbacv1.ClusterRoleBinding
				decode(&o)
				m.bindings = append(m.bindings, &o)
			case "StatefulSet":
				var o appsv1.StatefulSet
				decode(&o)
				m.statefulSets = append(m.statefulSets, &o)
			case "DaemonSet":
				var o appsv1.DaemonSet
				decode(&o)
				m.daemonSets = append(m.daemonSets, &o)
			default:
				t.Fatalf("%s: kind %q is not checked by this test", where, meta.Kind)
			}
		}
	}
	return m
}

// checkPod checks a pod template's references: its service account and
// config maps exist in its namespace (or are the operator's, named in
// external), every mount names a volume (or a claim template, also in
// external), and the pod can be selected.
func (m *manifests) checkPod(t *testing.T, ns string, tpl *corev1.PodTemplateSpec, selector *metav1.LabelSelector, external ...string) {
	t.Helper()
	for k, v := range selector.MatchLabels {
		if tpl.Labels[k] != v {
			t.Errorf("%s: the selector %s=%s does not select its own pods", tpl.Labels, k, v)
		}
	}
	if _, ok := m.serviceAccounts[ns+"/"+tpl.Spec.ServiceAccountName]; !ok {
		t.Errorf("service account %s/%s is not defined", ns, tpl.Spec.ServiceAccountName)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range tpl.Spec.Volumes {
		volumes[v.Name] = v
		if cm := v.ConfigMap; cm != nil {
			if _, ok := m.configMaps[ns+"/"+cm.Name]; !ok && !slices.Contains(external, cm.Name) {
				t.Errorf("volume %s: config map %s/%s is not defined", v.Name, ns, cm.Name)
			}
		}
	}
	for _, c := range tpl.Spec.Containers {
		for _, vm := range c.VolumeMounts {
			if _, ok := volumes[vm.Name]; !ok && !slices.Contains(external, vm.Name) {
				t.Errorf("container %s mounts volume %s, which the pod does not have", c.Name, vm.Name)
			}
		}
	}
}

// mountedAt returns the volume mounted at dir in the pod's first container.
func mountedAt(tpl *corev1.PodTemplateSpec, dir string) *corev1.Volume {
	for _, vm := range tpl.Spec.Containers[0].VolumeMounts {
		if vm.MountPath == dir {
			for _, v := range tpl.Spec.Volumes {
				if v.Name == vm.Name {
					return &v
				}
			}
		}
	}
	return nil
}

// The Kubernetes manifests decode strictly, refer to each other correctly,
// and carry configs that load and agree with each other and the pods.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	if len(m.statefulSets) != 1 || len(m.daemonSets) != 1 {
		t.Fatalf("%d StatefulSets and %d DaemonSets, want one server and one agent", len(m.statefulSets), len(m.daemonSets))
	}
	srv, ag := m.statefulSets[0], m.daemonSets[0]
	for _, ns := range []string{srv.Namespace, ag.Namespace} {
		if !slices.Contains(m.namespaces, ns) {
			t.Errorf("namespace %s is not defined", ns)
		}
	}
	var claims []string
	for _, c := range srv.Spec.VolumeClaimTemplates {
		claims = append(claims, c.Name)
	}
	m.checkPod(t, srv.Namespace, &srv.Spec.Template, srv.Spec.Selector, claims...)
	m.checkPod(t, ag.Namespace, &ag.Spec.Template, ag.Spec.Selector, "shortleaf-bundle")

	// RBAC: each binding names a defined role and service account; the
	// server may review tokens and read pods and nodes.
	for _, b := range m.bindings {
		if _, ok := m.clusterRoles[b.RoleRef.Name]; !ok {
			t.Errorf("binding %s: cluster role %s is not defined", b.Name, b.RoleRef.Name)
		}
		for _, s := range b.Subjects {
			if _, ok := m.serviceAccounts[s.Namespace+"/"+s.Name]; !ok {
				t.Errorf("binding %s: service account %s/%s is not defined", b.Name, s.Namespace, s.Name)
			}
		}
	}
	allowed := func(sa, group, resource, verb string) bool {
		for _, b := range m.bindings {
			if !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return s.Namespace+"/"+s.Name == sa }) {
				continue
			}
			for _, r := range m.clusterRoles[b.RoleRef.Name].Rules {
				if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
					return true
				}
			}
		}
		return false
	}
	serverSA := srv.Namespace + "/" + srv.Spec.Template.Spec.ServiceAccountName
	agentSA := ag.Namespace + "/" + ag.Spec.Template.Spec.ServiceAccountName
	for _, need := range [][4]string{{serverSA, "authentication.k8s.io", "tokenreviews", "create"}, {serverSA, "", "pods", "get"},
		{serverSA, "", "nodes", "get"}, {agentSA, "", "nodes/proxy", "get"}} {
		if !allowed(need[0], need[1], need[2], need[3]) {
			t.Errorf("%s may not %s %s", need[0], need[3], need[2])
		}
	}

	// The server's config loads (with a kubeconfig standing in for the
	// in-cluster one) and its service answers on the agent API's port.
	serverFile, err := config.DecodeServerFile(strings.NewReader(m.configMaps[srv.Namespace+"/shortleaf-server"].Data["server.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	_ = os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443'}}]\n"+
		"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {token: t}}]\n"), 0o600)
	for _, c := range serverFile.NodeAttestors.K8sPSAT.Clusters {
		c.KubeConfigFile = kubeconfig
	}
	dataDir := serverFile.DataDir
	serverFile.DataDir = dir
	if _, _, err := serverFile.Resolve(withPass); err != nil {
		t.Fatalf("server.yaml in the config map: %v", err)
	}
	_, apiPort, _ := strings.Cut(serverFile.AgentAPIAddress, ":")
	svc := m.services[srv.Namespace+"/"+srv.Spec.ServiceName]
	if svc == nil {
		t.Fatalf("the StatefulSet's service %s is not defined", srv.Spec.ServiceName)
	}
	if svc.Spec.Ports[0].TargetPort.StrVal != "agent-api" || strconv.Itoa(int(svc.Spec.Ports[0].Port)) != apiPort {
		t.Errorf("service port %v does not lead to the agent API on %s", svc.Spec.Ports[0], apiPort)
	}
	if !slices.ContainsFunc(srv.Spec.Template.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool {
		return p.Name == "agent-api" && strconv.Itoa(int(p.ContainerPort)) == apiPort
	}) {
		t.Errorf("the server container does not expose agent-api on %s", apiPort)
	}
	if !slices.ContainsFunc(srv.Spec.Template.Spec.Containers[0].VolumeMounts, func(vm corev1.VolumeMount) bool {
		return slices.Contains(claims, vm.Name) && vm.MountPath == dataDir
	}) {
		t.Errorf("the server's data_dir %s is not on its persistent volume", dataDir)
	}

	// The agent's config loads, reaches the server's service, attests to a
	// cluster the server knows with a token projected for its audience,
	// and puts its socket and data on the host.
	raw := m.configMaps[ag.Namespace+"/shortleaf-agent"].Data["agent.yaml"]
	agentFile, err := config.DecodeAgentFile(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	bundle, _ := catest.New(t).Bundle()
	bundlePath := filepath.Join(dir, "bundle.pem")
	_ = os.WriteFile(bundlePath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bundle.X509Authorities()[0].Raw}), 0o600)
	if _, err := config.ParseAgent(bytes.NewReader([]byte(strings.ReplaceAll(raw, agentFile.TrustBundlePath, bundlePath)))); err != nil {
		t.Fatalf("agent.yaml in the config map: %v", err)
	}
	if want := srv.Spec.ServiceName + "." + srv.Namespace + ".svc.cluster.local:" + apiPort; agentFile.ServerAddress[0] != want {
		t.Errorf("agent server_address %s, want %s", agentFile.ServerAddress[0], want)
	}
	if agentFile.TrustDomain != serverFile.TrustDomain {
		t.Errorf("agent trust domain %s, server %s", agentFile.TrustDomain, serverFile.TrustDomain)
	}
	psat := agentFile.NodeAttestor.K8sPSAT
	cluster := serverFile.NodeAttestors.K8sPSAT.Clusters[psat.Cluster]
	if cluster == nil {
		t.Fatalf("the agent attests to cluster %s, which the server does not configure", psat.Cluster)
	}
	if sa := strings.Replace(agentSA, "/", ":", 1); !slices.Contains(cluster.ServiceAccountAllowList, sa) {
		t.Errorf("the agent's service account %s is not allowed by the server", sa)
	}
	tokenDir, tokenFile := filepath.Split(psat.TokenPath)
	v := mountedAt(&ag.Spec.Template, strings.TrimSuffix(tokenDir, "/"))
	if v == nil || v.Projected == nil || v.Projected.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("no projected token volume at %s", tokenDir)
	}
	if tok := v.Projected.Sources[0].ServiceAccountToken; tok.Path != tokenFile || tok.Audience != cluster.Audience {
		t.Errorf("projected token %s for audience %q; the agent reads %s and the server wants %q", tok.Path, tok.Audience, tokenFile, cluster.Audience)
	}
	for _, dir := range []string{filepath.Dir(agentFile.SocketPath), agentFile.DataDir} {
		if v := mountedAt(&ag.Spec.Template, dir); v == nil || v.HostPath == nil {
			t.Errorf("%s is not a hostPath volume", dir)
		}
	}
	if v := mountedAt(&ag.Spec.Template, filepath.Dir(agentFile.TrustBundlePath)); v == nil || v.ConfigMap == nil {
		t.Errorf("the trust bundle %s is not mounted from a config map", agentFile.TrustBundlePath)
	}
	if !ag.Spec.Template.Spec.HostPID {
		t.Error("the agent needs hostPID to read its callers' cgroups")
	}
	// The probes ask the agent's health listener: /healthz for liveness,
	// /readyz (valid SVIDs, a recent sync) for readiness.
	_, metricsPort, _ := net.SplitHostPort(agentFile.MetricsAddress)
	c := ag.Spec.Template.Spec.Containers[0]
	for name, probe := range map[string]struct {
		p    *corev1.Probe
		path string
	}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
		if probe.p == nil || probe.p.HTTPGet == nil || probe.p.HTTPGet.Path != probe.path || probe.p.HTTPGet.Port.String() != metricsPort {
			t.Errorf("the agent's %s probe should GET %s on the metrics_address port %s: %+v", name, probe.path, metricsPort, probe.p)
		}
	}
}
