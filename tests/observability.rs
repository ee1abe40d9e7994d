//! Observability of real `strata node` processes: the admin endpoint's `/metrics`, `/health`,
//! `/ready` and `/stats`, JSON logs, and traces exported over OTLP/HTTP to a receiver run by
//! the test.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use strata_client::{Client, ClientConfig};
use strata_proto::{Key, Namespace, Value};

#[path = "support/mod.rs"]
mod support;

use support::{Cluster, TestNode, free_udp_port};

fn ns() -> Namespace {
    Namespace::default_namespace()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// One sample of a Prometheus text exposition: metric name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
fn parse_metrics(text: &str) -> BTreeMap<Series, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        let series = Series {
            name: name.to_owned(),
            labels,
        };
        samples.insert(series, value.parse().unwrap());
    }
    samples
}

/// The value of `name` with (at least) `labels`; 0 when no such series exists yet.
fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
        .sum()
}

fn scrape(node: &TestNode) -> BTreeMap<Series, f64> {
    let (status, body) = node.admin_get("/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

#[test]
fn metrics_move_by_exactly_the_operations_done() {
    let cluster = Cluster::new().unwrap();
    let node = cluster
        .start("node", &[], &[("STRATA_LOG_FORMAT", "json")])
        .unwrap();
    assert_eq!(node.admin_get("/health").unwrap(), (200, "ok\n".into()));
    // A node outside a cluster is ready as soon as it serves.
    assert_eq!(node.admin_get("/ready").unwrap().0, 200);
    assert_eq!(node.admin_get("/nothing").unwrap().0, 404);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(Client::connect(ClientConfig::new(
            node.addr().to_string(),
            cluster.certs(),
        )))
        .unwrap();
    let before = scrape(&node);
    runtime.block_on(async {
        for k in ["a", "b", "c"] {
            let v = Value::from(format!("value of {k}").into_bytes());
            client.set(&ns(), &key(k), v, None).await.unwrap();
        }
        assert!(client.get(&ns(), &key("a")).await.unwrap().is_some());
        assert!(client.get(&ns(), &key("c")).await.unwrap().is_some());
        assert!(client.get(&ns(), &key("missing")).await.unwrap().is_none());
        assert!(client.delete(&ns(), &key("b")).await.unwrap());
        assert!(!client.delete(&ns(), &key("missing")).await.unwrap());
    });
    let after = scrape(&node);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let ops = "strata_operations_total";
    assert_eq!(delta(ops, &[("op", "set"), ("outcome", "ok")]), 3.0);
    assert_eq!(delta(ops, &[("op", "get"), ("outcome", "hit")]), 2.0);
    assert_eq!(delta(ops, &[("op", "get"), ("outcome", "miss")]), 1.0);
    assert_eq!(delta(ops, &[("op", "delete"), ("outcome", "ok")]), 1.0);
    assert_eq!(delta(ops, &[("op", "delete"), ("outcome", "absent")]), 1.0);
    assert_eq!(delta(ops, &[("op", "set")]), 3.0, "no other set outcome");
    let latency = "rpc_server_call_duration_seconds_count";
    assert_eq!(delta(latency, &[("rpc_method", "get")]), 3.0);
    assert_eq!(delta(latency, &[("rpc_method", "set")]), 3.0);
    // The memory tier answered both hits, took the three writes and lost one to the delete;
    // it holds a and c.
    let memory = [("tier", "memory")];
    assert_eq!(delta("strata_tier_hits_total", &memory), 2.0);
    assert_eq!(delta("strata_tier_sets_total", &memory), 3.0);
    assert_eq!(delta("strata_tier_deletes_total", &memory), 1.0);
    assert_eq!(value(&after, "strata_tier_entries", &memory), 2.0);
    assert!(value(&after, "strata_tier_size_bytes", &memory) > 0.0);
    assert_eq!(value(&after, "strata_connections", &[]), 1.0);
    assert_eq!(value(&after, "strata_node_ready", &[]), 1.0);

    // /stats: the reference's get_stats shape plus identity.
    let (status, body) = node.admin_get("/stats").unwrap();
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["node"]["id"], 1);
    assert_eq!(stats["node"]["addr"], node.addr().to_string());
    assert_eq!(stats["cluster"]["clustered"], false);
    assert_eq!(stats["cluster"]["ready"], true);
    assert_eq!(stats["manager"]["hits"], 2);
    assert_eq!(stats["manager"]["misses"], 1);
    assert_eq!(stats["manager"]["sets"], 3);
    assert_eq!(stats["tiers"]["memory"]["hits"], 2);

    // `strata stats` reports the same document per node, and `strata top` shows the node.
    let addr = node.addr().to_string();
    let certs = cluster.certs();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(support::strata_bin().unwrap())
            .args(args)
            .args(["--addr", &addr, "--certs"])
            .arg(&certs)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "strata {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let stats: serde_json::Value = serde_json::from_str(&cli(&["stats", "--json"])).unwrap();
    assert_eq!(stats["nodes"][0]["stats"]["cluster"]["ready"], true);
    assert_eq!(stats["aggregate"]["manager"]["sets"], 3);
    let frames = cli(&["top", "--iterations", "2", "--interval", "0.2", "--json"]);
    let frames: Vec<serde_json::Value> = frames
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2, "{frames:?}");
    for frame in &frames {
        assert_eq!(frame["nodes"][0]["id"], 1);
        assert_eq!(frame["nodes"][0]["ready"], true);
        assert_eq!(frame["nodes"][0]["entries"], 2);
        assert!(frame["nodes"][0]["ops_per_sec"].is_number(), "{frame}");
    }
    let table = cli(&["top", "--iterations", "1", "--interval", "0.2"]);
    assert!(
        table.contains("OPS/S") && table.contains("total"),
        "{table}"
    );

    // Logs were JSON lines.
    drop(client);
    drop(runtime);
    let log = node.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the node logged nothing at info");
    for line in lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            parsed["level"].is_string() && parsed["fields"].is_object(),
            "{line}"
        );
    }
}

/// Polls `GET /ready` until it answers `want` (at most `within`).
fn wait_ready(node: &TestNode, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = node.admin_get("/ready").unwrap();
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready stayed {status} ({body}); log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ready_turns_true_only_after_join() {
    let cluster = Cluster::new().unwrap();
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_udp_port().unwrap()).collect();
    // Node 2 asks to join through node 1, which is not running yet.
    let second = cluster.start_member(2, addrs[1], Some(addrs[0])).unwrap();
    assert_eq!(second.admin_get("/health").unwrap().0, 200);
    for _ in 0..10 {
        let (status, body) = second.admin_get("/ready").unwrap();
        assert_eq!(status, 503, "ready before joining: {body}");
        assert!(body.contains("not a member"), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = cluster.start_member(1, addrs[0], None).unwrap();
    wait_ready(&first, 200, Duration::from_secs(60));
    wait_ready(&second, 200, Duration::from_secs(60));
    let (_, body) = second.admin_get("/stats").unwrap();
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["cluster"]["state"], "active");
    assert_eq!(stats["cluster"]["clustered"], true);
    assert!(stats["cluster"]["epoch"].as_u64().unwrap() >= 1);
    let metrics = parse_metrics(&second.admin_get("/metrics").unwrap().1);
    assert_eq!(value(&metrics, "strata_node_ready", &[]), 1.0);
    assert_eq!(
        value(&metrics, "strata_cluster_members", &[("state", "active")]),
        2.0
    );
    assert!(value(&metrics, "strata_raft_term", &[]) >= 1.0);
    assert_eq!(value(&metrics, "strata_raft_leader", &[]), 1.0);
}

/// Bodies POSTed to `/v1/traces` of a small OTLP/HTTP receiver.
#[derive(Clone, Default)]
struct Received(Arc<std::sync::Mutex<Vec<bytes::Bytes>>>);

/// Starts an OTLP/HTTP receiver on a free port of 127.0.0.1 on `runtime`.
fn otlp_receiver(runtime: &tokio::runtime::Runtime) -> (SocketAddr, Received) {
    use http_body_util::BodyExt as _;
    let received = Received::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let store = received.clone();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await?.to_bytes();
                            if path == "/v1/traces" {
                                store.0.lock().unwrap().push(body);
                            }
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// A span as received, with what the test looks at.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    service: String,
    instance: String,
    name: String,
    op: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

fn decode_spans(bodies: &[bytes::Bytes]) -> Vec<ReceivedSpan> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
    let text = |attrs: &[KeyValue], key: &str| {
        attrs
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                any_value::Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default()
    };
    let mut spans = Vec::new();
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
        for resource_spans in request.resource_spans {
            let attrs = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            let service = text(&attrs, "service.name");
            let instance = text(&attrs, "service.instance.id");
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        instance: instance.clone(),
                        op: text(&span.attributes, "op"),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
    }
    spans
}

#[test]
fn a_write_is_one_trace_from_client_to_node_to_replica() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, received) = otlp_receiver(&runtime);
    let endpoint = format!("http://{receiver}");
    // Export within a fraction of a second instead of the default 5 s.
    let env = [
        ("STRATA_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let cluster = Cluster::new().unwrap();
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_udp_port().unwrap()).collect();
    let first = cluster.start_member_with(1, addrs[0], None, &env).unwrap();
    wait_ready(&first, 200, Duration::from_secs(60));
    let second = cluster
        .start_member_with(2, addrs[1], Some(addrs[0]), &env)
        .unwrap();
    wait_ready(&second, 200, Duration::from_secs(60));
    // Both members hold every partition (two replicas), so the write reaches both.
    let certs = cluster.certs();
    let out = std::process::Command::new(support::strata_bin().unwrap())
        .args(["set", "traced:key", "traced value", "--addr"])
        .arg(addrs[0].to_string())
        .arg("--certs")
        .arg(&certs)
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strata set failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = decode_spans(&received.0.lock().unwrap());
        let clients: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.service == "strata" && s.name == "strata.client" && s.op == "set")
            .collect();
        let found = clients.iter().find_map(|client| {
            let owner = spans.iter().find(|s| {
                s.service == "strata-node"
                    && s.op == "set"
                    && s.trace_id == client.trace_id
                    && s.parent == client.span_id
            })?;
            let replica = spans.iter().find(|s| {
                s.service == "strata-node"
                    && s.op == "replicate"
                    && s.trace_id == client.trace_id
                    && s.parent == owner.span_id
            })?;
            Some((owner.clone(), replica.clone()))
        });
        if let Some((owner, replica)) = found {
            assert_ne!(
                owner.instance, replica.instance,
                "the replica is the other node"
            );
            assert_eq!(owner.trace_id.len(), 16);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no client → node → replica trace among {} spans: {:#?}",
            spans.len(),
            spans
                .iter()
                .map(|s| (&s.service, &s.instance, &s.name, &s.op))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(first);
    drop(second);
}
