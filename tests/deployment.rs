//! The Docker deployment (docker-compose.yml, Dockerfile, .dockerignore, deploy/) checked
//! without a Docker engine: the files are parsed and cross-checked against each other and
//! against deploy/proxy/proxy.toml, and every metric the Grafana dashboard queries is looked
//! up in the /metrics of a real proxy (in front of Apache Kafka and kinesis-local) that has
//! carried traffic under the deployment's own [kinesis] and [[mirror]] settings.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::kinesis::KinesisLocal;
use support::metrics::scrape;
use support::{num, run_client, KafkaCluster, Proxy};

/// The proxy's config inside the compose deployment, relative to the repository.
const PROXY_CONFIG: &str = "deploy/proxy/proxy.toml";
const DASHBOARD: &str = "deploy/grafana/dashboards/kafka-kinesis-proxy.json";
const PROXY_SERVICE: &str = "proxy";
const METRIC_PREFIX: &str = "kafka_kinesis_proxy_";

/// What the issue asks the dashboard to show, by metric.
const REQUIRED_ON_DASHBOARD: &[&str] = &[
    "kafka_kinesis_proxy_dual_write_success_ratio",
    "kafka_kinesis_proxy_mirror_percent",
    "kafka_kinesis_proxy_kafka_records_total",
    "kafka_kinesis_proxy_mirror_records_total",
    "kafka_kinesis_proxy_putrecords_duration_seconds",
    "kafka_kinesis_proxy_shard_throttled_total",
    "kafka_kinesis_proxy_mirror_buffer_bytes",
    "kafka_kinesis_proxy_spool_bytes",
    "kafka_kinesis_proxy_request_duration_seconds",
    "kafka_kinesis_proxy_upstream_duration_seconds",
];

// ---------------------------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml_file(rel: &str) -> Yaml {
    let mut v: Yaml =
        serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: `<<` merge keys: {e}"));
    v
}

fn compose() -> Yaml {
    yaml_file("docker-compose.yml")
}

fn proxy_config() -> toml::Table {
    read(PROXY_CONFIG)
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{PROXY_CONFIG} is not TOML: {e}"))
}

/// A YAML scalar as compose reads it (numbers and booleans too).
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose
        .get("services")
        .and_then(Yaml::as_mapping)
        .expect("docker-compose.yml has a `services` mapping")
        .iter()
        .map(|(k, v)| (scalar(k).expect("service name"), v.clone()))
        .collect()
}

fn service<'a>(services: &'a BTreeMap<String, Yaml>, name: &str) -> &'a Yaml {
    services
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

/// `environment:` as a map, from either the mapping or the `KEY=VALUE` list form.
fn env(svc: &Yaml) -> BTreeMap<String, String> {
    match svc.get("environment") {
        None => BTreeMap::new(),
        Some(Yaml::Mapping(m)) => m
            .iter()
            .map(|(k, v)| (scalar(k).unwrap(), scalar(v).unwrap_or_default()))
            .collect(),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .filter_map(|i| {
                let s = scalar(i)?;
                let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
        Some(other) => panic!("unexpected environment: {other:?}"),
    }
}

/// `depends_on:` names, from either the list or the mapping form.
fn depends_on(svc: &Yaml) -> Vec<String> {
    match svc.get("depends_on") {
        None => Vec::new(),
        Some(Yaml::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(Yaml::Mapping(m)) => m.keys().filter_map(scalar).collect(),
        Some(other) => panic!("unexpected depends_on: {other:?}"),
    }
}

/// A command or entrypoint as a list of words (the string form split on whitespace).
fn words(v: Option<&Yaml>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(Yaml::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    }
}

/// Published ports of a service: (host port, container port) pairs, ranges expanded. Short
/// syntax (`[IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/PROTO]`) and long syntax both.
fn published_ports(svc: &Yaml) -> Vec<(Option<u16>, u16)> {
    fn range(s: &str) -> Vec<u16> {
        match s.split_once('-') {
            Some((a, b)) => (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).collect(),
            None => vec![s.parse().unwrap_or_else(|e| panic!("port {s:?}: {e}"))],
        }
    }
    let mut out = Vec::new();
    for p in svc
        .get("ports")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        if let Some(long) = p.as_mapping() {
            let target: u16 = scalar(&long[&Yaml::from("target")])
                .expect("ports: target")
                .parse()
                .unwrap();
            let host = long
                .get(Yaml::from("published"))
                .and_then(scalar)
                .map(|h| range(&h)[0]);
            out.push((host, target));
            continue;
        }
        let spec = scalar(p).expect("port entry");
        let spec = spec.split('/').next().unwrap();
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect(); // container, host, ip
        let containers = range(parts[0]);
        match parts.get(1) {
            None => out.extend(containers.into_iter().map(|c| (None, c))),
            Some(h) => {
                let hosts = range(h);
                assert_eq!(hosts.len(), containers.len(), "port range {spec:?}");
                out.extend(hosts.into_iter().map(Some).zip(containers));
            }
        }
    }
    out
}

/// Bind mounts of a service: (host path relative to the repository, container path).
fn bind_mounts(svc: &Yaml) -> Vec<(String, String)> {
    volumes(svc)
        .into_iter()
        .filter(|(source, _)| source.starts_with("./") || source.starts_with('/'))
        .map(|(source, target)| {
            let rel = source.trim_start_matches("./").trim_end_matches('/');
            (rel.to_owned(), target)
        })
        .collect()
}

/// Every mount of a service, bind or named volume: (source as written, container path).
fn volumes(svc: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in svc
        .get("volumes")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        let (source, target) = match v.as_mapping() {
            Some(m) => (
                m.get(Yaml::from("source")).and_then(scalar),
                m.get(Yaml::from("target")).and_then(scalar),
            ),
            None => {
                let s = scalar(v).unwrap();
                let mut parts = s.split(':');
                (
                    parts.next().map(str::to_owned),
                    parts.next().map(str::to_owned),
                )
            }
        };
        if let (Some(source), Some(target)) = (source, target) {
            out.push((source, target.trim_end_matches('/').to_owned()));
        }
    }
    out
}

/// The repository path that a service sees at `container_path`, through its bind mounts.
fn host_path_of(svc: &Yaml, container_path: &str) -> Option<String> {
    bind_mounts(svc).into_iter().find_map(|(src, dst)| {
        if container_path == dst {
            Some(src)
        } else {
            container_path
                .strip_prefix(&format!("{dst}/"))
                .map(|rest| format!("{src}/{rest}"))
        }
    })
}

fn image(svc: &Yaml) -> Option<String> {
    svc.get("image").and_then(scalar)
}

/// `HOST:PORT` split, for `kafka-1:9092` and `http://localstack:4566`.
fn host_port(addr: &str) -> (String, u16) {
    let addr = addr.split("://").last().unwrap().trim_end_matches('/');
    let (h, p) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} has no port"));
    (h.to_owned(), p.parse().unwrap())
}

/// Kafka services: name -> node id, for every compose service that runs a broker.
fn kafka_brokers(services: &BTreeMap<String, Yaml>) -> BTreeMap<String, u16> {
    services
        .iter()
        .filter_map(|(name, svc)| {
            let e = env(svc);
            let roles = e.get("KAFKA_PROCESS_ROLES")?;
            if !roles.split(',').any(|r| r.trim() == "broker") {
                return None;
            }
            let id = e
                .get("KAFKA_NODE_ID")
                .unwrap_or_else(|| panic!("{name}: no KAFKA_NODE_ID"))
                .parse()
                .unwrap();
            Some((name.clone(), id))
        })
        .collect()
}

/// `NAME://HOST:PORT,...` as (listener name, host, port).
fn kafka_listeners(spec: &str) -> Vec<(String, String, u16)> {
    spec.split(',')
        .map(|l| {
            let (name, addr) = l.trim().split_once("://").expect("NAME://HOST:PORT");
            let (host, port) = host_port(addr);
            (name.to_owned(), host, port)
        })
        .collect()
}

fn port_of_bind(bind: &str) -> u16 {
    host_port(bind).1
}

fn cfg_str<'a>(cfg: &'a toml::Table, section: &str, key: &str) -> Option<&'a str> {
    cfg.get(section)?.get(key)?.as_str()
}

fn cfg_int(cfg: &toml::Table, section: &str, key: &str) -> Option<i64> {
    cfg.get(section)?.get(key)?.as_integer()
}

/// Every port the proxy listens on for Kafka clients, given the broker node ids.
fn proxy_kafka_ports(cfg: &toml::Table, node_ids: &BTreeSet<u16>) -> BTreeSet<u16> {
    let bootstrap = cfg_int(cfg, "listener", "bootstrap_port").unwrap_or(19092);
    let base = cfg_int(cfg, "listener", "broker_port_base").unwrap_or(19100);
    let explicit = cfg
        .get("listener")
        .and_then(|l| l.get("broker_ports"))
        .and_then(|p| p.as_table());
    let mut ports = BTreeSet::from([bootstrap as u16]);
    for id in node_ids {
        let port = explicit
            .and_then(|m| m.get(&id.to_string()))
            .and_then(|p| p.as_integer())
            .unwrap_or(base + i64::from(*id));
        ports.insert(u16::try_from(port).expect("broker port in range"));
    }
    ports
}

/// Dockerfile instructions, with line continuations joined and comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let full = std::mem::take(&mut current);
        if let Some((inst, rest)) = full.trim().split_once(char::is_whitespace) {
            out.push((inst.to_uppercase(), rest.trim().to_owned()));
        }
    }
    out
}

/// The exec-form JSON array of ENTRYPOINT/CMD.
fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("not exec form {rest:?}: {e}"))
}

/// `kafka_kinesis_proxy_*` names in a PromQL expression, with the histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find(METRIC_PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(base_name(&tail[..end]).to_owned());
        rest = &tail[end..];
    }
    out
}

fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("dashboard.panels") {
        out.push(p);
        if let Some(nested) = p.get("panels").and_then(Json::as_array) {
            out.extend(nested);
        }
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(dashboard: &Json) -> Vec<String> {
    let mut out: Vec<String> = panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for q in [&v["definition"], &v["query"], &v["query"]["query"]] {
            if let Some(s) = q.as_str() {
                out.push(s.to_owned());
            }
        }
    }
    out
}

fn dashboard_json() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn dashboard_metrics() -> BTreeSet<String> {
    dashboard_exprs(&dashboard_json())
        .iter()
        .flat_map(|e| metric_names(e))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Static checks
// ---------------------------------------------------------------------------------------------

#[test]
fn every_service_has_an_image_or_build_and_dependencies_exist() {
    let compose = compose();
    let services = services(&compose);
    for name in [
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "kafka-init",
        "localstack",
        PROXY_SERVICE,
        "prometheus",
        "grafana",
    ] {
        service(&services, name);
    }
    for (name, svc) in &services {
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "service {name} has neither `image` nor `build`"
        );
        // Pulled images are pinned to a version, never `latest`.
        if svc.get("build").is_none() {
            let image = image(svc).unwrap();
            let tag = image
                .rsplit('/')
                .next()
                .unwrap()
                .split_once(':')
                .map(|(_, t)| t);
            assert!(
                matches!(tag, Some(t) if t != "latest"),
                "service {name}: image {image:?} is not pinned to a version tag"
            );
        }
        for dep in depends_on(svc) {
            assert!(
                services.contains_key(&dep),
                "service {name} depends on {dep:?}, which is not a service"
            );
            assert_ne!(&dep, name, "service {name} depends on itself");
        }
    }
    // No dependency cycles: compose would refuse to start.
    fn visit(
        name: &str,
        services: &BTreeMap<String, Yaml>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(name) {
            return;
        }
        assert!(
            !path.iter().any(|p| p == name),
            "depends_on cycle: {path:?} -> {name}"
        );
        path.push(name.to_owned());
        for dep in depends_on(&services[name]) {
            visit(&dep, services, path, done);
        }
        path.pop();
        done.insert(name.to_owned());
    }
    let mut done = BTreeSet::new();
    for name in services.keys() {
        visit(name, &services, &mut Vec::new(), &mut done);
    }

    // The proxy is built from this repository's Dockerfile.
    let proxy = service(&services, PROXY_SERVICE);
    let (context, dockerfile) = match proxy.get("build") {
        Some(Yaml::Mapping(b)) => (
            b.get(Yaml::from("context"))
                .and_then(scalar)
                .unwrap_or_else(|| ".".into()),
            b.get(Yaml::from("dockerfile"))
                .and_then(scalar)
                .unwrap_or_else(|| "Dockerfile".into()),
        ),
        Some(v) => (scalar(v).unwrap(), "Dockerfile".into()),
        None => panic!("the proxy service must `build` from the Dockerfile"),
    };
    assert_eq!(
        repo().join(&context).canonicalize().unwrap(),
        repo().canonicalize().unwrap(),
        "the proxy builds from the repository root"
    );
    assert_eq!(dockerfile, "Dockerfile");
    assert!(repo().join(&context).join(&dockerfile).is_file());

    // Kafka: three KRaft nodes of the pinned apache/kafka image, ids 1-3, one quorum.
    let brokers = kafka_brokers(&services);
    assert_eq!(
        brokers.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3]),
        "three brokers with node ids 1, 2, 3: {brokers:?}"
    );
    let mut cluster_ids = BTreeSet::new();
    for name in brokers.keys() {
        let svc = service(&services, name);
        assert!(image(svc).unwrap().starts_with("apache/kafka:"), "{name}");
        let e = env(svc);
        cluster_ids.insert(e.get("CLUSTER_ID").cloned().expect("CLUSTER_ID"));
        let voters = &e["KAFKA_CONTROLLER_QUORUM_VOTERS"];
        for voter in voters.split(',') {
            let (id, addr) = voter.split_once('@').expect("ID@HOST:PORT");
            let (host, _) = host_port(addr);
            assert_eq!(
                brokers.get(&host).map(u16::to_string).as_deref(),
                Some(id),
                "{name}: quorum voter {voter} must name broker service {host} with its node id"
            );
        }
        let inter = &e["KAFKA_INTER_BROKER_LISTENER_NAME"];
        let advertised = kafka_listeners(&e["KAFKA_ADVERTISED_LISTENERS"]);
        assert!(
            advertised
                .iter()
                .any(|(l, h, _)| l == inter && h == name.as_str()),
            "{name}: the inter-broker listener {inter} is advertised on the compose network"
        );
    }
    assert_eq!(cluster_ids.len(), 1, "one CLUSTER_ID for all nodes");

    // LocalStack runs Kinesis.
    let localstack = service(&services, "localstack");
    assert!(image(localstack)
        .unwrap()
        .starts_with("localstack/localstack:"));
    assert!(env(localstack)["SERVICES"]
        .split(',')
        .any(|s| s.trim() == "kinesis"));
}

#[test]
fn ports_and_addresses_agree_with_the_proxy_config() {
    let compose = compose();
    let services = services(&compose);
    let cfg = proxy_config();
    let proxy = service(&services, PROXY_SERVICE);

    // The compose proxy reads deploy/proxy/proxy.toml at the path the image's CMD names.
    let cmd = dockerfile()
        .into_iter()
        .rfind(|(i, _)| i == "CMD")
        .map(|(_, r)| exec_form(&r))
        .expect("Dockerfile CMD");
    let mut args = words(proxy.get("command"));
    if args.is_empty() {
        args = cmd;
    }
    let config_at = args
        .iter()
        .position(|a| a == "--config")
        .map(|i| args[i + 1].clone())
        .expect("the proxy runs with --config");
    assert_eq!(
        host_path_of(proxy, &config_at).as_deref(),
        Some(PROXY_CONFIG),
        "the proxy container must see {PROXY_CONFIG} at {config_at}"
    );

    // Listening on every interface, so published ports reach it.
    assert_eq!(cfg_str(&cfg, "listener", "bind"), Some("0.0.0.0"));
    let admin_bind = cfg_str(&cfg, "admin", "bind").expect("[admin] bind");
    assert!(admin_bind.starts_with("0.0.0.0:"), "{admin_bind}");
    let admin_port = port_of_bind(admin_bind);

    let brokers = kafka_brokers(&services);
    let node_ids: BTreeSet<u16> = brokers.values().copied().collect();
    let kafka_ports = proxy_kafka_ports(&cfg, &node_ids);
    assert_eq!(
        kafka_ports,
        BTreeSet::from([19092, 19101, 19102, 19103]),
        "bootstrap 19092 and broker_port_base 19100 + node ids 1-3"
    );

    // Clients on the host connect to advertised_host:PORT, the proxy's own port number, so
    // every Kafka port is published on the same host port; and the admin port too.
    let advertised = cfg_str(&cfg, "listener", "advertised_host").expect("advertised_host");
    let published = published_ports(proxy);
    for port in kafka_ports.iter().copied().chain([admin_port]) {
        assert!(
            published.contains(&(Some(port), port)),
            "the proxy's port {port} must be published as {port}:{port}, got {published:?}"
        );
    }
    if advertised != "127.0.0.1" && advertised != "localhost" {
        assert!(
            services.contains_key(advertised),
            "advertised_host {advertised:?} is neither the Docker host nor a compose service"
        );
    }

    // The image declares the same ports.
    let exposed: BTreeSet<u16> = dockerfile()
        .into_iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, r)| {
            r.split_whitespace()
                .map(|p| p.split('/').next().unwrap().parse::<u16>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    for port in kafka_ports.iter().copied().chain([admin_port]) {
        assert!(exposed.contains(&port), "Dockerfile does not EXPOSE {port}");
    }

    // bootstrap_servers: broker services, on a listener that advertises the service's name
    // (the proxy connects to whatever Metadata returns, so that must resolve too).
    let servers = cfg["kafka"]["bootstrap_servers"]
        .as_array()
        .expect("bootstrap_servers");
    assert!(!servers.is_empty());
    for server in servers {
        let (host, port) = host_port(server.as_str().unwrap());
        assert!(
            brokers.contains_key(&host),
            "bootstrap server {server} is not a Kafka broker service of docker-compose.yml"
        );
        let e = env(service(&services, &host));
        let listeners = kafka_listeners(&e["KAFKA_LISTENERS"]);
        let (name, _, _) = listeners
            .iter()
            .find(|(_, _, p)| *p == port)
            .unwrap_or_else(|| panic!("{host} has no listener on port {port}: {listeners:?}"));
        let advertised = kafka_listeners(&e["KAFKA_ADVERTISED_LISTENERS"]);
        assert!(
            advertised
                .iter()
                .any(|(n, h, p)| n == name && h == &host && *p == port),
            "{host} must advertise its {name} listener as {host}:{port}: {advertised:?}"
        );
    }
    // The proxy waits for the cluster and the stream.
    let deps = depends_on(proxy);
    for dep in ["kafka-init", "localstack"] {
        assert!(deps.iter().any(|d| d == dep), "proxy depends_on {dep}");
    }

    // [kinesis] endpoint_url: the LocalStack service, on its edge port.
    let endpoint = cfg_str(&cfg, "kinesis", "endpoint_url").expect("[kinesis] endpoint_url");
    let (host, port) = host_port(endpoint);
    assert_eq!(host, "localstack", "{endpoint}");
    assert_eq!(port, 4566, "{endpoint}");
    assert_eq!(cfg_str(&cfg, "kinesis", "region"), Some("us-east-1"));
    let proxy_env = env(proxy);
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert_eq!(
            proxy_env.get(key).map(String::as_str),
            Some("test"),
            "proxy env {key}"
        );
    }

    // [spool] dir is a volume (spooled records outlive the container), and the image creates
    // it for its non-root user, so that a fresh named volume inherits the ownership.
    let spool = cfg_str(&cfg, "spool", "dir").expect("[spool] dir (required with routes)");
    let spool = spool.trim_end_matches('/');
    let (source, _) = volumes(proxy)
        .into_iter()
        .find(|(_, target)| target == spool)
        .unwrap_or_else(|| panic!("the proxy service mounts no volume at spool dir {spool}"));
    if !source.starts_with('.') && !source.starts_with('/') {
        assert!(
            compose["volumes"].get(source.as_str()).is_some(),
            "named volume {source} is not declared under top-level `volumes`"
        );
    }
    let runtime_runs: String = dockerfile()
        .into_iter()
        .rev()
        .take_while(|(i, _)| i != "FROM")
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r)
        .collect();
    assert!(
        runtime_runs.contains(spool) && runtime_runs.contains("chown"),
        "the runtime stage must create {spool} owned by the proxy's user"
    );

    // Each mirrored topic is created by kafka-init, each stream by LocalStack's init hook.
    let routes = cfg["mirror"].as_array().expect("[[mirror]] routes");
    assert!(!routes.is_empty());
    let init = words(service(&services, "kafka-init").get("command")).join(" ");
    let localstack = service(&services, "localstack");
    let hooks = host_path_of(localstack, "/etc/localstack/init/ready.d")
        .expect("LocalStack mounts an init hook directory at /etc/localstack/init/ready.d");
    let mut hook_text = String::new();
    for entry in fs::read_dir(repo().join(&hooks)).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(path.extension().and_then(|e| e.to_str()), Some("sh"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!"), "{} needs a shebang", path.display());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert!(
                mode & 0o111 != 0,
                "{} must be executable (LocalStack skips it otherwise)",
                path.display()
            );
        }
        hook_text.push_str(&text);
    }
    assert!(hook_text.contains("awslocal kinesis create-stream"));
    for route in routes {
        let topic = route["topic"].as_str().unwrap();
        let stream = route["stream"].as_str().unwrap();
        assert!(
            init.contains(&format!("--topic {topic} ")) && init.contains("--create"),
            "kafka-init must create mirrored topic {topic}: {init}"
        );
        assert!(
            hook_text.contains(stream),
            "the LocalStack init hook must create stream {stream}"
        );
    }
    assert!(
        init.contains("--partitions 6"),
        "orders has 6 partitions: {init}"
    );

    // Prometheus scrapes the proxy's admin port.
    let prometheus = service(&services, "prometheus");
    let prom_config = host_path_of(prometheus, "/etc/prometheus/prometheus.yml")
        .expect("prometheus mounts its config at /etc/prometheus/prometheus.yml");
    let prom = yaml_file(&prom_config);
    let want = format!("{PROXY_SERVICE}:{admin_port}");
    let scrape = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .find(|job| {
            job["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|sc| sc["targets"].as_sequence().cloned().unwrap_or_default())
                .any(|t| scalar(&t).as_deref() == Some(want.as_str()))
        })
        .unwrap_or_else(|| panic!("{prom_config} does not scrape {want}"));
    assert_eq!(
        scrape
            .get("metrics_path")
            .and_then(scalar)
            .unwrap_or_else(|| "/metrics".into()),
        "/metrics"
    );

    // The proxy's compose healthcheck probes the admin port.
    let health = words(proxy["healthcheck"].get("test")).join(" ");
    assert!(
        health.contains(&format!("/{admin_port}")),
        "healthcheck: {health}"
    );
}

#[test]
fn deploy_config_passes_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
        .args(["check-config", "--config"])
        .arg(repo().join(PROXY_CONFIG))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config {PROXY_CONFIG}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_its_context_has_the_sources() {
    let inst = dockerfile();
    let froms: Vec<&String> = inst
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].to_lowercase().contains(" as "),
        "a named rust builder stage first: {}",
        froms[0]
    );
    assert!(
        froms.last().unwrap().starts_with("debian:bookworm-slim"),
        "runtime stage: {}",
        froms.last().unwrap()
    );
    let last_from = inst.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let (build, runtime) = inst.split_at(last_from);
    assert!(
        build
            .iter()
            .any(|(i, r)| i == "RUN" && r.contains("cargo build --release --locked")),
        "the builder runs `cargo build --release --locked`"
    );
    assert!(
        runtime
            .iter()
            .any(|(i, r)| i == "RUN" && r.contains("ca-certificates")),
        "the runtime stage installs ca-certificates"
    );
    assert!(
        runtime
            .iter()
            .any(|(i, r)| i == "COPY" && r.contains("--from=")),
        "the runtime stage copies the binary from the builder"
    );

    // Runs as a non-root user.
    let user = runtime
        .iter()
        .rfind(|(i, _)| i == "USER")
        .map(|(_, r)| r.clone())
        .expect("a USER instruction in the runtime stage");
    let name = user.split(':').next().unwrap();
    assert!(!matches!(name, "root" | "0" | ""), "USER {user} is root");

    let entrypoint = runtime
        .iter()
        .rfind(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, r)| exec_form(r))
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint, ["kafka-kinesis-proxy"]);
    let cmd = runtime
        .iter()
        .rfind(|(i, _)| i == "CMD")
        .map(|(_, r)| exec_form(r))
        .expect("CMD");
    assert_eq!(
        cmd,
        ["run", "--config", "/etc/kafka-kinesis-proxy/proxy.toml"]
    );

    // Everything COPY takes from the context exists and passes .dockerignore, and the copies
    // cover every file Cargo needs to load the manifest and build.
    let ignore = read(".dockerignore");
    let kept: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore starts from `*` and lists what to keep"
    );
    let mut copied = Vec::new();
    for (_, rest) in build.iter().filter(|(i, _)| i == "COPY") {
        let parts: Vec<&str> = rest
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        for src in &parts[..parts.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                repo().join(src).exists(),
                "COPY {src}: not in the repository"
            );
            assert!(
                kept.iter()
                    .any(|k| src == *k || src.starts_with(&format!("{k}/"))),
                "COPY {src}: excluded by .dockerignore"
            );
            copied.push(src.to_owned());
        }
    }
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src/main.rs".to_owned(),
        "src/lib.rs".to_owned(),
    ];
    for kind in ["bin", "bench", "example", "test"] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            match target.get("path").and_then(|p| p.as_str()) {
                Some(p) => needed.push(p.to_owned()),
                None => {
                    let dir = match kind {
                        "bin" => "src/bin",
                        "bench" => "benches",
                        "example" => "examples",
                        _ => "tests",
                    };
                    needed.push(format!("{dir}/{}.rs", target["name"].as_str().unwrap()))
                }
            }
        }
    }
    if let Some(build_rs) = manifest["package"].get("build").and_then(|b| b.as_str()) {
        needed.push(build_rs.to_owned());
    } else if repo().join("build.rs").exists() {
        needed.push("build.rs".to_owned());
    }
    for file in needed {
        // Tests are not built by `cargo build`; the others must be there.
        if file.starts_with("tests/") {
            continue;
        }
        assert!(
            copied
                .iter()
                .any(|c| file == *c || file.starts_with(&format!("{c}/"))),
            "the build needs {file}, which the Dockerfile does not COPY (copied: {copied:?})"
        );
    }
}

#[test]
fn grafana_is_provisioned_with_the_dashboard_and_the_prometheus_datasource() {
    let compose = compose();
    let services = services(&compose);
    let grafana = service(&services, "grafana");
    let prov = host_path_of(grafana, "/etc/grafana/provisioning")
        .expect("grafana mounts deploy/grafana/provisioning at /etc/grafana/provisioning");

    // Datasource: the compose Prometheus, with a fixed uid the dashboard refers to.
    let mut uids = BTreeSet::new();
    for entry in fs::read_dir(repo().join(&prov).join("datasources")).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let ds = yaml_file(&rel);
        for d in ds["datasources"].as_sequence().expect("datasources") {
            assert_eq!(d["type"].as_str(), Some("prometheus"));
            let (host, port) = host_port(d["url"].as_str().unwrap());
            let prometheus = service(&services, &host);
            assert!(image(prometheus).unwrap().starts_with("prom/prometheus:"));
            assert_eq!(port, 9090, "Prometheus listens on 9090");
            uids.insert(d["uid"].as_str().expect("datasource uid").to_owned());
        }
    }
    assert!(!uids.is_empty());

    // Dashboard provider: a directory grafana sees, holding the dashboard JSON.
    let mut dashboard_dirs = Vec::new();
    for entry in fs::read_dir(repo().join(&prov).join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for p in yaml_file(&rel)["providers"]
            .as_sequence()
            .expect("providers")
        {
            let dir = p["options"]["path"]
                .as_str()
                .expect("provider options.path");
            dashboard_dirs.push(
                host_path_of(grafana, dir)
                    .unwrap_or_else(|| panic!("dashboard path {dir} is not mounted")),
            );
        }
    }
    assert!(
        dashboard_dirs
            .iter()
            .any(|d| repo().join(d).join("kafka-kinesis-proxy.json") == repo().join(DASHBOARD)),
        "{DASHBOARD} is not under a provisioned dashboard path: {dashboard_dirs:?}"
    );

    // The dashboard: parses, unique panel ids, every query on the provisioned datasource.
    let dashboard = dashboard_json();
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_i64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        assert!(panel["gridPos"]["w"].as_i64().is_some(), "{title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let uid = t["datasource"]["uid"]
                .as_str()
                .or(panel["datasource"]["uid"].as_str())
                .unwrap_or_else(|| panic!("{title}: query without a datasource"));
            assert!(
                uids.contains(uid),
                "{title}: datasource {uid} not provisioned"
            );
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                expr.matches('(').count() == expr.matches(')').count()
                    && expr.matches('{').count() == expr.matches('}').count(),
                "{title}: unbalanced expression {expr}"
            );
            assert!(
                expr.contains(METRIC_PREFIX),
                "{title}: {expr} queries no proxy metric"
            );
        }
    }

    // Everything the issue asks for is on it.
    let names = dashboard_metrics();
    let missing: Vec<&&str> = REQUIRED_ON_DASHBOARD
        .iter()
        .filter(|m| !names.contains(**m))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
    let exprs = dashboard_exprs(&dashboard).join("\n");
    for q in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(
            exprs.contains(&format!(
                "{q} sum by (le, stream) (rate(kafka_kinesis_proxy_putrecords_duration_seconds_bucket"
            )),
            "PutRecords {q} missing"
        );
    }
    assert!(exprs.contains("by (stream, shard)") && exprs.contains("shard_throttled_total"));
}

// ---------------------------------------------------------------------------------------------
// The dashboard against a live proxy
// ---------------------------------------------------------------------------------------------

/// The deployment's [kinesis] and [[mirror]] sections, pointed at `endpoint`.
fn deploy_kinesis_and_mirror(endpoint: &str) -> String {
    let cfg = proxy_config();
    let mut kinesis = cfg["kinesis"].as_table().unwrap().clone();
    kinesis.insert("endpoint_url".into(), endpoint.into());
    kinesis.insert("linger_ms".into(), 20.into());
    let mut extra = toml::Table::new();
    extra.insert("kinesis".into(), kinesis.into());
    extra.insert("mirror".into(), cfg["mirror"].clone());
    extra.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_metric_is_exported_by_a_live_proxy() {
    let cfg = proxy_config();
    let routes = cfg["mirror"].as_array().unwrap().clone();
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    for route in &routes {
        // As deploy/localstack/ready.d creates it.
        kinesis
            .create_stream(route["stream"].as_str().unwrap(), 4)
            .await;
    }
    let proxy = Proxy::start_with(cluster, &deploy_kinesis_and_mirror(&kinesis.endpoint));
    let bootstrap = proxy.bootstrap();

    const RECORDS: i64 = 600;
    for route in &routes {
        let topic = route["topic"].as_str().unwrap();
        cluster.create_topic(topic, 6);
        let out = run_client(
            "confluent",
            &[
                "produce",
                "--bootstrap",
                &bootstrap,
                "--topic",
                topic,
                "--count",
                &RECORDS.to_string(),
                "--codec",
                "lz4",
                "--acks",
                "all",
            ],
        );
        assert_eq!(num(&out, "produced"), RECORDS, "{out}");
        assert_eq!(num(&out, "error_count"), 0, "{out}");
        // A few with acks=0 too: the Kafka-rate panel shows them separately.
        let out = run_client(
            "confluent",
            &[
                "produce",
                "--bootstrap",
                &bootstrap,
                "--topic",
                topic,
                "--count",
                "50",
                "--codec",
                "none",
                "--acks",
                "0",
            ],
        );
        assert_eq!(num(&out, "error_count"), 0, "{out}");
    }

    // The compose healthcheck, run as is against this proxy's admin port.
    let compose = compose();
    let services = services(&compose);
    let admin_port = port_of_bind(cfg_str(&cfg, "admin", "bind").unwrap());
    let health = words(service(&services, PROXY_SERVICE)["healthcheck"].get("test"));
    assert_eq!(&health[..3], ["CMD", "bash", "-c"], "{health:?}");
    let script = health[3..]
        .join(" ")
        .replace(&format!("/{admin_port}"), &format!("/{}", proxy.admin_port));
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success(), "the proxy healthcheck failed: {script}");

    // Every metric the dashboard queries, once the mirror has delivered.
    let wanted = dashboard_metrics();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (exported, missing) = loop {
        let metrics = scrape(proxy.admin_port);
        let exported: BTreeSet<String> = metrics
            .keys()
            .map(|series| base_name(series.split('{').next().unwrap()).to_owned())
            .collect();
        let sent = support::metrics::value(
            &metrics,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "sent")],
        );
        let missing: Vec<String> = wanted.difference(&exported).cloned().collect();
        if (missing.is_empty() && sent > 0.0) || Instant::now() > deadline {
            assert!(sent > 0.0, "nothing was mirrored: {metrics:#?}");
            break (exported, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the proxy does not export: {missing:?}\n\
         exported: {exported:#?}"
    );
    let stream = routes[0]["stream"].as_str().unwrap();
    assert!(
        !kinesis.read_all(stream).await.is_empty(),
        "nothing reached {stream}"
    );
}
