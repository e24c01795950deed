//! The Kubernetes variants, as kustomize renders them: `deploy/kubernetes` (SQLite, one
//! replica) and `deploy/kubernetes-postgres` (an overlay: several replicas on PostgreSQL and
//! Redis). Their configs pass `keygate check`; probes and ports agree with the listeners; the
//! pod outlasts the drain and runs unprivileged; each inits its store before serving.

use super::*;

/// The Kubernetes objects as `kubectl apply -k` would send them: rendered by kustomize, or
/// (without kubectl, outside CI) read from the files it would render.
pub(super) struct Kubernetes {
    objects: Vec<Value>,
    /// The `gateway.toml` of the ConfigMap or Secret the Deployment mounts.
    pub(super) config_text: String,
}

impl Kubernetes {
    /// The SQLite variant, `deploy/kubernetes`.
    pub(super) fn load() -> Kubernetes {
        let objects = match tool("kubectl") {
            Some(kubectl) => kustomize(&kubectl, &repo("deploy/kubernetes")),
            None => ["deployment.yaml", "service.yaml", "pvc.yaml", "pdb.yaml"]
                .iter()
                .map(|file| yaml(&format!("deploy/kubernetes/{file}")))
                .collect(),
        };
        let mut k8s = Kubernetes {
            objects,
            config_text: String::new(),
        };
        k8s.config_text = match k8s.volume_files("config") {
            Some(files) => files["gateway.toml"].clone(),
            // Unrendered: the generator's source file.
            None => read("deploy/kubernetes/gateway.toml"),
        };
        k8s
    }

    /// The PostgreSQL variant, `deploy/kubernetes-postgres`, rendered as an operator would
    /// after writing its `gateway.toml` from `gateway.example.toml` (the file itself is theirs,
    /// and not in the repository: it holds the store's password). `None` without kubectl: an
    /// overlay has no meaning unrendered.
    pub(super) fn postgres() -> Option<Kubernetes> {
        let kubectl = tool("kubectl")?;
        let dir = tempfile::tempdir().unwrap();
        for variant in ["kubernetes", "kubernetes-postgres"] {
            copy_folder(&repo(&format!("deploy/{variant}")), &dir.path().join(variant));
        }
        let overlay = dir.path().join("kubernetes-postgres");
        std::fs::copy(overlay.join("gateway.example.toml"), overlay.join("gateway.toml")).unwrap();
        let mut k8s = Kubernetes {
            objects: kustomize(&kubectl, &overlay),
            config_text: String::new(),
        };
        let files = k8s
            .volume_files("config")
            .expect("the config volume's object is rendered");
        k8s.config_text = files["gateway.toml"].clone();
        Some(k8s)
    }

    /// The files of a ConfigMap or Secret volume, by name, from the rendered object it names;
    /// `None` when that object is not among the objects (unrendered: a generator's).
    fn volume_files(&self, volume: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let volume = self.volume(volume);
        let (kind, name) = match (
            volume["configMap"]["name"].as_str(),
            volume["secret"]["secretName"].as_str(),
        ) {
            (Some(name), None) => ("ConfigMap", name),
            (None, Some(name)) => ("Secret", name),
            _ => panic!("not a ConfigMap or Secret volume: {volume}"),
        };
        let object = self
            .objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)?;
        let data = object["data"].as_object().expect("data");
        let text = |value: &Value| {
            let value = value.as_str().expect("a string");
            if kind == "ConfigMap" {
                return value.to_owned();
            }
            use base64::Engine;
            // kubectl wraps the base64 over lines.
            let value: String = value.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .expect("base64");
            String::from_utf8(bytes).expect("UTF-8")
        };
        Some(
            data.iter()
                .map(|(file, value)| (file.clone(), text(value)))
                .collect(),
        )
    }

    fn object(&self, kind: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
    }

    pub(super) fn pod(&self) -> &Value {
        &self.object("Deployment")["spec"]["template"]["spec"]
    }

    pub(super) fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        containers
            .iter()
            .find(|c| c["name"] == "keygate")
            .expect("a container named keygate")
    }

    fn volume(&self, name: &str) -> &Value {
        let volumes = self.pod()["volumes"].as_array().expect("volumes");
        volumes.iter().find(|v| v["name"] == name).expect("the volume")
    }

    /// A probe's or Service's port: a number, or the name of one of the container's ports.
    fn port(&self, port: &Value) -> u64 {
        if let Some(number) = port.as_u64() {
            return number;
        }
        let name = port.as_str().expect("a port number or name");
        let ports = self.container()["ports"].as_array().expect("container ports");
        let named = ports.iter().find(|p| p["name"] == name);
        named
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    fn config(&self) -> keygate::config::Config {
        let dir = tempfile::tempdir().unwrap();
        keygate::config::parse(&self.config_text, dir.path()).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn kustomize(kubectl: &Path, dir: &Path) -> Vec<Value> {
    let rendered = run_ok(kubectl, &["kustomize", &dir.to_string_lossy()]);
    yaml_documents(&String::from_utf8(rendered.stdout).unwrap())
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Each variant that can be loaded here: SQLite always, PostgreSQL with kubectl.
fn variants() -> Vec<(&'static str, Kubernetes)> {
    let mut variants = vec![("deploy/kubernetes", Kubernetes::load())];
    variants.extend(Kubernetes::postgres().map(|k8s| ("deploy/kubernetes-postgres", k8s)));
    variants
}

#[test]
fn the_kubernetes_configs_pass_check() {
    for (variant, k8s) in variants() {
        println!("{variant}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &k8s.config_text).unwrap();
        keygate_check(&path);
    }
}

#[test]
fn the_kubernetes_probes_and_ports_match_the_listeners() {
    for (variant, k8s) in variants() {
        println!("{variant}");
        probes_and_ports_match_the_listeners(&k8s);
    }
}

fn probes_and_ports_match_the_listeners(k8s: &Kubernetes) {
    let config = k8s.config();
    let container = k8s.container();
    let admin_port = u64::from(config.admin.listen.port());
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            k8s.port(&get["port"]),
            admin_port,
            "{probe} on the admin listener"
        );
    }
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "the kubelet probes the pod IP"
    );
    let annotations = &k8s.object("Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());

    let service = k8s.object("Service");
    let target = k8s.port(&service["spec"]["ports"][0]["targetPort"]);
    assert_eq!(
        target,
        u64::from(config.server.listen.port()),
        "the Service sends to the proxy"
    );
}

#[test]
fn the_kubernetes_pod_outlasts_the_drain_and_runs_unprivileged() {
    for (variant, k8s) in variants() {
        println!("{variant}");
        pod_outlasts_the_drain_and_runs_unprivileged(&k8s);
    }
}

fn pod_outlasts_the_drain_and_runs_unprivileged(k8s: &Kubernetes) {
    let config = k8s.config();
    let pod = k8s.pod();
    let pause = k8s.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > seconds(config.server.shutdown_grace) + pause,
        "terminationGracePeriodSeconds {grace} must exceed shutdown_grace plus the preStop pause"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let init_containers = pod["initContainers"].as_array().into_iter().flatten();
    for container in init_containers.chain([k8s.container()]) {
        let security = &container["securityContext"];
        let name = &container["name"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
    }
}

/// SQLite: one replica, ever, and the old pod gone before the new one opens the file. The
/// PostgreSQL variant: several replicas, rolling, no volume, its config (with the store's
/// password) in a Secret, limits shared through Redis.
#[test]
fn the_sqlite_variant_is_one_replica_and_the_postgres_variant_several() {
    for (variant, k8s) in variants() {
        let config = k8s.config();
        let deployment = &k8s.object("Deployment")["spec"];
        let replicas = deployment["replicas"].as_u64().expect("replicas");
        let strategy = &deployment["strategy"]["type"];
        let claims = k8s
            .objects
            .iter()
            .filter(|o| o["kind"] == "PersistentVolumeClaim");
        match config.store.url {
            keygate::config::StoreUrl::Sqlite(_) => {
                assert_eq!(replicas, 1, "{variant}: a SQLite store is one replica per volume");
                assert_eq!(strategy, "Recreate", "{variant}");
                let manifest = read(&format!("{variant}/deployment.yaml"));
                assert!(
                    manifest.contains("can only ever be one replica"),
                    "{variant} says so"
                );
            }
            keygate::config::StoreUrl::Postgres(_) => {
                assert!(replicas >= 2, "{variant}: replicas {replicas}");
                assert_eq!(strategy, "RollingUpdate", "{variant}");
                assert_eq!(claims.count(), 0, "{variant}: no PersistentVolumeClaim");
                let volumes = k8s.pod()["volumes"].as_array().expect("volumes");
                assert!(volumes.iter().all(|v| v.get("persistentVolumeClaim").is_none()));
                assert!(
                    k8s.volume("config")["secret"]["secretName"].is_string(),
                    "{variant}"
                );
                assert!(
                    matches!(
                        config.rate_limit.backend,
                        keygate::config::RateLimitBackend::Redis { .. }
                    ),
                    "{variant}: limits shared through Redis"
                );
                advertises_the_pod_ip(&k8s, &config, variant);
            }
        }
    }
}

/// Replicas of one config file each advertise their own admin address: `admin.advertise_env`
/// names a variable the pod sets from its IP.
fn advertises_the_pod_ip(k8s: &Kubernetes, config: &keygate::config::Config, variant: &str) {
    let name = config
        .admin
        .advertise_env
        .as_deref()
        .unwrap_or_else(|| panic!("{variant}: admin.advertise_env, for the fleet's requests"));
    let env = k8s.container()["env"].as_array().expect("env");
    let set = env.iter().find(|e| e["name"] == name);
    let field = set.map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]);
    assert_eq!(field, Some(&Value::from("status.podIP")), "{variant}: {env:?}");
    let others = env.iter().filter(|e| e["name"] == "KEYGATE_ADMIN_TOKEN").count();
    assert_eq!(others, 1, "{variant}: the patch keeps the base's variables");
}

/// Every variant creates or updates its store in an initContainer before keygate serves it:
/// SQLite with `--if-missing` (never touching a file that exists); PostgreSQL without it, so
/// the tables are brought up to date under the migrations' advisory lock.
#[test]
fn every_kubernetes_variant_inits_its_store_before_serving() {
    for (variant, k8s) in variants() {
        let init = k8s.pod()["initContainers"].as_array().expect("initContainers");
        let args: Vec<&str> = init
            .iter()
            .flat_map(|c| c["args"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        assert!(args.starts_with(&["store", "init"]), "{variant}: {args:?}");
        let sqlite = matches!(k8s.config().store.url, keygate::config::StoreUrl::Sqlite(_));
        assert_eq!(args.contains(&"--if-missing"), sqlite, "{variant}: {args:?}");
    }
}
