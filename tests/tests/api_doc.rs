//! `docs/api.md` stays true to the gateway: every route the routers declare is in its
//! route table, every route of the table answers on the listener the table names (and
//! only there), and every series the live `/metrics` exposes is in its Prometheus table
//! with the same type and labels — while every series the table names is one the code
//! defines. Requests go through the routers in memory: each listener serves its router.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use agentgate_e2e::{base_config, mock, Gateway};
use agentgate_mock_agent::MockAgent;
use http::StatusCode;
use serde_json::{json, Value};

/// The document under test, and the file that declares the routers' routes.
const API_MD: &str = include_str!("../../docs/api.md");
const APP_RS: &str = include_str!("../../crates/gateway/src/app.rs");

// === reading the document ===

/// The table rows (cells, trimmed) of the `## {title}` section.
fn table(title: &str) -> Vec<Vec<&'static str>> {
    let heading = format!("\n## {title}\n");
    let start = API_MD
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/api.md has no `## {title}` section"))
        + heading.len();
    let section = &API_MD[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// The words in backticks of one table cell.
fn ticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// One row of the route table.
#[derive(Debug)]
struct DocRoute {
    method: &'static str,
    path: &'static str,
    listener: &'static str,
}

fn documented_routes() -> Vec<DocRoute> {
    let routes: Vec<DocRoute> = table("Routes")
        .into_iter()
        .map(|row| DocRoute {
            method: row[0].trim_matches('`'),
            path: row[1].trim_matches('`'),
            listener: row[2],
        })
        .collect();
    assert!(routes.len() >= 10, "the route table is missing: {routes:?}");
    routes
}

/// One row of the Prometheus table: type and label names.
fn documented_series() -> BTreeMap<&'static str, (&'static str, BTreeSet<&'static str>)> {
    let series: BTreeMap<_, _> = table("Prometheus series")
        .into_iter()
        .map(|row| {
            let labels = ticked(row[2]).into_iter().collect();
            (row[0].trim_matches('`'), (row[1], labels))
        })
        .collect();
    assert!(
        series.len() >= 14,
        "the series table is missing: {series:?}"
    );
    series
}

// === the gateway under test ===

/// A gateway with its admin routes on their own listener, one agent (`echo`) and a
/// one-stage `default` pipeline.
async fn gateway() -> (Gateway, MockAgent) {
    let agent = mock("echo", |_| {}).await;
    let config = format!(
        "{}\n[agents.echo]\nurl = \"{}\"\n\n[pipelines.default]\n\
         [[pipelines.default.stages]]\nname = \"echo\"\nagent = \"echo\"\n",
        base_config("admin_listen = \"127.0.0.1:1\"", "2s"),
        agent.url()
    );
    (Gateway::start(&config).await, agent)
}

/// The router of a listener.
#[derive(Clone, Copy, Debug)]
enum Listener {
    Public,
    Admin,
}

/// Whether `listener`'s router's own fallbacks answered: no route for the path, or none
/// for the method. Anything else (a handler's 4xx included) means the route is served.
async fn unrouted(gw: &Gateway, listener: Listener, method: &str, path: &str) -> bool {
    let res = match listener {
        Listener::Public => gw.call(method, path, &[], "").await,
        Listener::Admin => gw.call_admin(method, path, &[], "").await,
    };
    let body: Value = serde_json::from_slice(&res.body).unwrap_or_default();
    let error = &body["error"];
    (res.status == StatusCode::NOT_FOUND && error["message"] == "no such route")
        || (res.status == StatusCode::METHOD_NOT_ALLOWED && error["kind"] == "method_not_allowed")
}

// === tests ===

#[test]
fn every_route_the_routers_declare_is_documented() {
    let declared: Vec<&str> = APP_RS
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(
        declared.len() >= 10,
        "no routes found in app.rs: {declared:?}"
    );
    let documented: BTreeSet<&str> = documented_routes().iter().map(|r| r.path).collect();
    let missing: Vec<&&str> = declared
        .iter()
        .filter(|p| !documented.contains(**p))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from the route table of docs/api.md: {missing:?}"
    );
}

#[tokio::test]
async fn every_documented_route_answers_on_its_listener_only() {
    let (gw, _agent) = gateway().await;
    use Listener::{Admin, Public};
    // The check can fail: an undocumented path is the router's fallback.
    assert!(unrouted(&gw, Public, "GET", "/no/such/route").await);

    for route in documented_routes() {
        let path = route
            .path
            .replace("{id}", "no-such-query")
            .replace("{agent}", "echo")
            .replace("{*path}", "x")
            .replace("{action}", "reset");
        let methods: &[&str] = match route.method {
            "ANY" => &["GET", "POST", "PUT", "DELETE", "PATCH"],
            one => &[one],
        };
        let (on, off): (&[Listener], &[Listener]) = match route.listener {
            "public" => (&[Public], &[Admin]),
            "admin" => (&[Admin], &[Public]),
            "both" => (&[Public, Admin], &[]),
            other => panic!("{route:?}: unknown listener `{other}`"),
        };
        for method in methods {
            for &listener in on {
                assert!(
                    !unrouted(&gw, listener, method, &path).await,
                    "documented but not served: {method} {path} on {listener:?} ({route:?})"
                );
            }
            for &listener in off {
                assert!(
                    unrouted(&gw, listener, method, &path).await,
                    "served on a listener the doc does not name: {method} {path} on \
                     {listener:?} ({route:?})"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_series_on_metrics_is_documented_with_its_type_and_labels() {
    let (gw, _agent) = gateway().await;
    // Exercise the families: a query, a proxied call, a breaker transition.
    let res = gw.post_json("/api/query", &json!({"query": "q"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    gw.call("GET", "/agents/echo/x", &[], "").await;
    let breaker = gw.state.agent("echo").expect("agent echo").breaker();
    breaker.force_open(None);
    breaker.reset();

    let res = gw.call_admin("GET", "/metrics", &[], "").await;
    assert_eq!(res.status, StatusCode::OK);
    let text = String::from_utf8(res.body.to_vec()).expect("UTF-8 exposition");
    let exposed = exposition(&text);
    assert!(exposed.len() >= 10, "too few families on /metrics:\n{text}");

    let documented = documented_series();
    for (family, (kind, labels)) in &exposed {
        let Some((doc_kind, doc_labels)) = documented.get(family.as_str()) else {
            panic!("`{family}` is on /metrics but not in docs/api.md");
        };
        assert_eq!(doc_kind, kind, "type of `{family}` (docs/api.md, /metrics)");
        let labels: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            doc_labels, &labels,
            "labels of `{family}` (docs/api.md, /metrics)"
        );
    }
}

#[test]
fn every_documented_series_is_defined_by_the_code() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut sources = String::new();
    read_sources(&crates, &mut sources);
    for name in documented_series().keys() {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "docs/api.md documents `{name}`, which no crate defines"
        );
    }
}

// === helpers ===

/// Each family of a Prometheus text exposition: its type and its label names (a
/// histogram's `le` left out).
fn exposition(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), (kind.to_owned(), BTreeSet::new())))
        .collect();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split('}').next().unwrap_or("")),
            None => (line.split(' ').next().unwrap_or(line), ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|f| families.get(*f).is_some_and(|(k, _)| k == "histogram"))
            .unwrap_or(name);
        let Some((_, names)) = families.get_mut(family) else {
            panic!("sample of an undeclared family: {line}");
        };
        names.extend(
            labels
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
                .filter(|k| !k.is_empty() && *k != "le")
                .map(str::to_owned),
        );
    }
    families
}

/// Appends every `.rs` file under `dir` to `out`, tests left out (a name that only a
/// test spells is not one the gateway exposes).
fn read_sources(dir: &Path, out: &mut String) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            if !path.ends_with("tests") {
                read_sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).expect("readable source"));
        }
    }
}
