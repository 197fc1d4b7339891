//! criterion benchmarks of the snapshot lifecycle on a store holding ten
//! thousand snapshots: listing them all with their sizes, searching by name
//! substring and by label, the first page of a newest-first listing, and a
//! policy pass with nothing due. See docs/lifecycle.md.

use cowvol::{SnapshotOptions, SnapshotPolicy, SnapshotQuery, Store, StoreOptions, VolumeId, VolumeOptions};
use criterion::{criterion_group, criterion_main, Criterion};

const VOLUMES: usize = 10;
const SNAPSHOTS_PER_VOLUME: usize = 1000;

/// A store with `VOLUMES` volumes and `SNAPSHOTS_PER_VOLUME` snapshots of
/// each, taken as group snapshots (one sync per group), every tenth labelled.
fn store_with_snapshots(dir: &std::path::Path) -> (Store, Vec<VolumeId>) {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let ids: Vec<VolumeId> =
        (0..VOLUMES).map(|i| store.create_volume(VolumeOptions::new(format!("vol{i}"), 1 << 30)).unwrap().id).collect();
    for n in 0..SNAPSHOTS_PER_VOLUME {
        let mut opts = SnapshotOptions::named(format!("nightly-{n:05}"));
        if n % 10 == 0 {
            opts.labels.insert("keep".into(), "yes".into());
        }
        store.create_group_snapshot(&ids, opts).unwrap();
    }
    (store, ids)
}

fn search(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (store, ids) = store_with_snapshots(dir.path());
    let total = VOLUMES * SNAPSHOTS_PER_VOLUME;
    let mut g = c.benchmark_group("snapshots_10k");
    g.bench_function("list_all_with_sizes", |b| {
        b.iter(|| {
            let page = store.search_snapshots(&SnapshotQuery::default());
            assert_eq!(page.total, total);
            page.snapshots.iter().map(|s| s.size_bytes).sum::<u64>()
        })
    });
    let by_name = SnapshotQuery { name_contains: Some("IGHTLY-0099".into()), ..Default::default() };
    g.bench_function("search_name_substring", |b| b.iter(|| store.search_snapshots(&by_name).total));
    let by_label = SnapshotQuery { labels: [("keep".to_string(), "yes".to_string())].into(), ..Default::default() };
    g.bench_function("search_label", |b| b.iter(|| store.search_snapshots(&by_label).total));
    let first_page = SnapshotQuery { volume: Some(ids[3]), newest_first: true, limit: Some(50), ..Default::default() };
    g.bench_function("first_page_of_one_volume", |b| b.iter(|| store.search_snapshots(&first_page).snapshots.len()));
    // Policies set on every volume; at this `now` none is due and none
    // prunes (no automatic snapshots): the cost of deciding.
    for &id in &ids {
        let p = SnapshotPolicy { interval_secs: 3600, keep_last: Some(24), keep_for_secs: None };
        store.set_policy(id, Some(p)).unwrap();
    }
    store.run_policies(1_800_000_000);
    g.bench_function("policy_pass_nothing_due", |b| b.iter(|| store.run_policies(1_800_000_001).created.len()));
    g.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
