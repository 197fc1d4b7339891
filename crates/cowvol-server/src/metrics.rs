//! Prometheus metrics: requests by route and status, their latencies, and
//! the store's space and object counts. What needs no walk of the trees is
//! read at every scrape; the figures that do (mapped and physical bytes)
//! come from a walk on a thread of its own, started by a scrape that finds
//! them stale, never more than one at a time: on a store of 10^8 blocks a
//! walk reads a million nodes, longer than scrapes are apart.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cowvol::Store;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Series {
    count: u64,
    sum_secs: f64,
    /// Per bucket (not cumulative); made cumulative when rendered.
    buckets: [u64; BUCKETS.len()],
}

/// Tree figures younger than this are served as they are.
const TREE_REFRESH_MIN: Duration = Duration::from_secs(60);
/// A walk that took `t` is not run again for `TREE_REFRESH_FACTOR * t`, so
/// walks take at most a tenth of the time however large the store.
const TREE_REFRESH_FACTOR: u32 = 10;
/// How long a scrape waits for the first walk before it answers without
/// the tree figures (a small store's walk finishes well within it).
const FIRST_WALK_WAIT: Duration = Duration::from_secs(2);

/// Request counters, keyed by (method, route template, status code), and
/// the store's tree figures as of the last walk.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
    walks: Arc<Walks>,
}

/// The tree figures of the last walk, and whether one is running.
#[derive(Debug, Default)]
struct Walks {
    state: Mutex<WalkState>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct WalkState {
    last: Option<TreeFigures>,
    running: bool,
    done: u64,
}

#[derive(Debug, Clone, Copy)]
struct TreeFigures {
    mapped_bytes: u64,
    physical_bytes: u64,
    taken_at: Instant,
    took: Duration,
}

impl TreeFigures {
    fn stale(&self) -> bool {
        self.taken_at.elapsed() >= TREE_REFRESH_MIN.max(self.took * TREE_REFRESH_FACTOR)
    }
}

impl Walks {
    /// The figures of the last walk, after starting a new one when they are
    /// stale and none runs. With no figures yet, waits a little for them.
    fn figures(self: &Arc<Self>, store: &Store) -> (Option<TreeFigures>, u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.last.is_none_or(|f| f.stale()) && !st.running {
            st.running = true;
            self.start(store.clone());
        }
        if st.last.is_none() && st.running {
            st = self.finished.wait_timeout(st, FIRST_WALK_WAIT).unwrap_or_else(|p| p.into_inner()).0;
        }
        (st.last, st.done)
    }

    fn start(self: &Arc<Self>, store: Store) {
        let walks = self.clone();
        let spawned = std::thread::Builder::new().name("cowvol-metrics-walk".into()).spawn(move || {
            let started = Instant::now();
            let s = store.stats();
            drop(store);
            let mut st = walks.state.lock().unwrap_or_else(|p| p.into_inner());
            st.last = Some(TreeFigures {
                mapped_bytes: s.mapped_bytes,
                physical_bytes: s.physical_bytes,
                taken_at: Instant::now(),
                took: started.elapsed(),
            });
            st.running = false;
            st.done += 1;
            walks.finished.notify_all();
        });
        if spawned.is_err() {
            // No thread, no walk: the next scrape tries again.
            self.state.lock().unwrap_or_else(|p| p.into_inner()).running = false;
        }
    }
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, code: u16, secs: f64) {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry((method.to_string(), route.to_string(), code)).or_default();
        s.count += 1;
        s.sum_secs += secs;
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            s.buckets[i] += 1;
        }
    }

    /// The Prometheus text exposition of the request series and the store.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        let tree = self.walks.figures(store);
        render_store(&mut out, store, tree);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP cowvol_http_requests_total HTTP requests answered, by method, route and status code.\n");
        out.push_str("# TYPE cowvol_http_requests_total counter\n");
        for ((m, r, c), s) in map.iter() {
            let _ =
                writeln!(out, "cowvol_http_requests_total{{method=\"{m}\",route=\"{r}\",code=\"{c}\"}} {}", s.count);
        }
        out.push_str("# HELP cowvol_http_request_duration_seconds Time to answer, by method, route and status code.\n");
        out.push_str("# TYPE cowvol_http_request_duration_seconds histogram\n");
        for ((m, r, c), s) in map.iter() {
            let labels = format!("method=\"{m}\",route=\"{r}\",code=\"{c}\"");
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "cowvol_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "cowvol_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "cowvol_http_request_duration_seconds_sum{{{labels}}} {}", s.sum_secs);
            let _ = writeln!(out, "cowvol_http_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn render_store(out: &mut String, store: &Store, (tree, walks): (Option<TreeFigures>, u64)) {
    let st = store.quick_stats();
    gauge(out, "cowvol_store_logical_bytes", "Sum of the logical sizes of live volumes.", st.logical_bytes);
    if let Some(t) = tree {
        gauge(out, "cowvol_store_mapped_bytes", "Bytes of written (mapped) ranges across volumes.", t.mapped_bytes);
        gauge(out, "cowvol_store_physical_bytes", "Bytes of data blocks stored, shared ones once.", t.physical_bytes);
        let _ = writeln!(
            out,
            "# HELP cowvol_store_tree_figures_age_seconds Age of the mapped and physical bytes (the walk of the trees that counted them).\n\
             # TYPE cowvol_store_tree_figures_age_seconds gauge\ncowvol_store_tree_figures_age_seconds {:.3}",
            t.taken_at.elapsed().as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "# HELP cowvol_store_tree_walks_total Walks of the trees run for these metrics.\n\
         # TYPE cowvol_store_tree_walks_total counter\ncowvol_store_tree_walks_total {walks}"
    );
    gauge(out, "cowvol_store_file_bytes", "Size of the store's data file.", st.file_bytes);
    gauge(out, "cowvol_store_free_bytes", "Free bytes inside the data file.", st.free_bytes);
    gauge(out, "cowvol_volumes", "Live volumes.", st.volumes as u64);
    gauge(out, "cowvol_templates", "Templates.", st.templates as u64);
    let w = st.written;
    out.push_str(
        "# HELP cowvol_store_written_bytes_total Bytes written to the data file since the store was opened, by what they hold.\n\
         # TYPE cowvol_store_written_bytes_total counter\n",
    );
    for (kind, bytes) in [
        ("data", w.data_bytes),
        ("zeroes", w.zeroed_bytes),
        ("log", w.log_bytes),
        ("nodes", w.node_bytes),
        ("deltas", w.delta_bytes),
        ("table", w.table_bytes),
        ("catalog", w.catalog_bytes),
        ("superblock", w.superblock_bytes),
    ] {
        let _ = writeln!(out, "cowvol_store_written_bytes_total{{kind=\"{kind}\"}} {bytes}");
    }
    let _ = writeln!(
        out,
        "# HELP cowvol_store_syncs_total fdatasync calls on the data file since the store was opened.\n\
         # TYPE cowvol_store_syncs_total counter\ncowvol_store_syncs_total {}",
        w.syncs
    );
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in store.all_snapshots() {
        *by.entry((s.kind.to_string(), s.status.to_string())).or_default() += 1;
    }
    out.push_str("# HELP cowvol_snapshots Snapshots, by kind and status.\n# TYPE cowvol_snapshots gauge\n");
    for ((kind, status), n) in by {
        let _ = writeln!(out, "cowvol_snapshots{{kind=\"{kind}\",status=\"{status}\"}} {n}");
    }
}

/// Middleware: counts and times every request under its route template
/// (never the raw path, which would make one series per id).
pub async fn record(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.observe(&method, &route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}
