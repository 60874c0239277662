//! The metadata store's contract, run on SQLite (a file, and memory) and on PostgreSQL (the
//! server `scripts/test` starts; without it the PostgreSQL tests fail, never skip).

use std::sync::Arc;
use std::time::Duration;
use streamhouse::serve::{ProducerSnapshot, RememberedBatch};
use streamhouse_metastore::{
    CommittedRange, LeaseId, MetadataStore, ObjectRef, StoreError, testing,
};

fn range(topic: &str, partition: u32, first: i64, next: i64, start: u64) -> CommittedRange {
    CommittedRange {
        topic: topic.into(),
        partition,
        first_offset: first,
        next_offset: next,
        byte_start: start,
        byte_len: 100,
        producers: vec![],
        lease: None,
    }
}

fn object(key: &str) -> ObjectRef {
    ObjectRef {
        key: key.into(),
        size: 1000,
    }
}

fn producer(id: i64, epoch: i16, offsets: &[i64]) -> ProducerSnapshot {
    ProducerSnapshot {
        producer_id: id,
        epoch,
        batches: offsets
            .iter()
            .enumerate()
            .map(|(i, &base_offset)| RememberedBatch {
                first_sequence: i as i32 * 10,
                last_sequence: i as i32 * 10 + 9,
                base_offset,
            })
            .collect(),
    }
}

/// Everything a store must do, on one store.
async fn contract(store: Arc<dyn MetadataStore>) {
    // Topics: created, grown, never shrunk; create of an existing one refused.
    let t = store.ensure_topic("orders", 2).await.unwrap();
    assert_eq!(t.partitions, 2);
    assert_eq!(store.ensure_topic("orders", 1).await.unwrap().partitions, 2);
    assert_eq!(store.ensure_topic("orders", 3).await.unwrap().partitions, 3);
    assert!(matches!(
        store.create_topic("orders", 5).await,
        Err(StoreError::TopicExists(name)) if name == "orders"
    ));
    store.create_topic("audit", 1).await.unwrap();
    let names: Vec<String> = store
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    let p2 = store.partition("orders", 2).await.unwrap().unwrap();
    assert_eq!((p2.log_start, p2.high_watermark), (0, 0));
    assert_eq!(store.partition("orders", 3).await.unwrap(), None);

    // A commit moves the high watermarks of all its partitions, and indexes the ranges.
    let mut first = vec![range("orders", 0, 0, 10, 0), range("orders", 1, 0, 4, 100)];
    first[0].producers = vec![producer(7, 0, &[0, 5])];
    store.commit(&object("o/1"), &first).await.unwrap();
    assert_eq!(
        store
            .partition("orders", 0)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        10
    );
    assert_eq!(
        store
            .partition("orders", 1)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        4
    );
    // The same object again (a retry after a lost answer): no change, no error.
    store.commit(&object("o/1"), &first).await.unwrap();
    assert_eq!(
        store
            .partition("orders", 0)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        10
    );

    // A range not starting at the high watermark: conflict, and nothing of the object lands,
    // not even its other, valid range.
    let stale = [range("orders", 1, 4, 6, 0), range("orders", 0, 3, 12, 100)];
    match store.commit(&object("o/2"), &stale).await {
        Err(StoreError::Conflict {
            partition: 0,
            expected: 3,
            found: 10,
            ..
        }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store
            .partition("orders", 1)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        4
    );
    assert_eq!(store.index("orders", 1, 0, 10).await.unwrap().len(), 1);
    // A partition that does not exist is a conflict too.
    assert!(matches!(
        store
            .commit(&object("o/3"), &[range("orders", 9, 0, 1, 0)])
            .await,
        Err(StoreError::Conflict { found: -1, .. })
    ));

    // The producer state is replaced by newer commits.
    let mut next = range("orders", 0, 10, 20, 0);
    next.producers = vec![producer(7, 0, &[0, 5, 10]), producer(8, 2, &[15])];
    store.commit(&object("o/4"), &[next]).await.unwrap();
    let producers = store.producers("orders", 0).await.unwrap();
    assert_eq!(
        producers,
        [producer(7, 0, &[0, 5, 10]), producer(8, 2, &[15])]
    );
    assert!(store.producers("orders", 1).await.unwrap().is_empty());

    // The index from any offset: the entry holding it first, in order, limited.
    let index = store.index("orders", 0, 12, 10).await.unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!((index[0].first_offset, index[0].next_offset), (10, 20));
    assert_eq!(index[0].object, "o/4");
    let index = store.index("orders", 0, 0, 1).await.unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!(index[0].object, "o/1");
    assert!(store.index("orders", 0, 20, 10).await.unwrap().is_empty());
    let stats = store.stats("orders", 0).await.unwrap();
    assert_eq!((stats.objects, stats.bytes, stats.entries), (2, 200, 2));

    // Retention: whole ranges below the new log start go; an object goes when no range of
    // any partition points into it any more.
    assert!(
        store
            .set_retention("orders", Some(60_000), None)
            .await
            .unwrap()
    );
    assert!(!store.set_retention("nope", None, None).await.unwrap());
    let orders = store
        .topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "orders");
    assert_eq!(
        orders.map(|t| (t.retention_ms, t.retention_bytes)),
        Some((Some(60_000), None))
    );
    assert!(store.index("orders", 0, 0, 1).await.unwrap()[0].created_ms > 0);
    assert!(
        store.truncate("orders", 0, 5).await.unwrap().is_empty(),
        "no whole range below 5"
    );
    assert_eq!(
        store
            .partition("orders", 0)
            .await
            .unwrap()
            .unwrap()
            .log_start,
        5
    );
    // o/1 still holds orders-1's records.
    assert!(store.truncate("orders", 0, 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .partition("orders", 0)
            .await
            .unwrap()
            .unwrap()
            .log_start,
        10
    );
    assert_eq!(
        store.index("orders", 0, 0, 10).await.unwrap()[0].object,
        "o/4"
    );
    assert_eq!(store.truncate("orders", 1, 4).await.unwrap(), ["o/1"]);
    // Never past the high watermark.
    store.truncate("orders", 1, 99).await.unwrap();
    assert_eq!(
        store
            .partition("orders", 1)
            .await
            .unwrap()
            .unwrap()
            .log_start,
        4
    );
    let stats = store.stats("orders", 0).await.unwrap();
    assert_eq!((stats.objects, stats.entries), (1, 1));

    // Deleting a topic takes its partitions, index and producers with it.
    // Its last object (o/4) is no longer needed by anyone.
    assert_eq!(
        store.delete_topic("orders").await.unwrap(),
        Some(vec!["o/4".to_owned()])
    );
    assert_eq!(store.delete_topic("orders").await.unwrap(), None);
    assert_eq!(store.partition("orders", 0).await.unwrap(), None);
    assert!(store.index("orders", 0, 0, 10).await.unwrap().is_empty());
    assert!(store.producers("orders", 0).await.unwrap().is_empty());
    // Recreated, it starts empty, as a new incarnation.
    let old_id = t.id;
    let again = store.ensure_topic("orders", 1).await.unwrap();
    assert!(old_id > 0 && again.id > 0 && again.id != old_id);
    assert_eq!(
        store
            .partition("orders", 0)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        0
    );

    // ACL rules: a set of texts, listed sorted.
    let (a, b) = ("allow p produce t*", "allow * describe *");
    assert!(store.acl_rules().await.unwrap().is_empty());
    assert!(store.add_acl_rule(a).await.unwrap());
    assert!(store.add_acl_rule(b).await.unwrap());
    assert!(!store.add_acl_rule(a).await.unwrap(), "already there");
    assert_eq!(store.acl_rules().await.unwrap(), [b, a]);
    assert!(store.remove_acl_rule(a).await.unwrap());
    assert!(
        !store.remove_acl_rule(a).await.unwrap(),
        "not there any more"
    );
    assert_eq!(store.acl_rules().await.unwrap(), [b]);
    store.remove_acl_rule(b).await.unwrap();

    // Producer ids: each handed out once, bound to its principal.
    let first = store.allocate_producer_id("payments").await.unwrap();
    let second = store.allocate_producer_id("search").await.unwrap();
    assert!(first > 0 && second > first);
    assert_eq!(
        store.producer_id_owner(first).await.unwrap().as_deref(),
        Some("payments")
    );
    assert_eq!(
        store.producer_id_owner(second).await.unwrap().as_deref(),
        Some("search")
    );
    assert_eq!(store.producer_id_owner(second + 1000).await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_in_memory_keeps_the_contract() {
    contract(
        streamhouse_metastore::open("sqlite::memory:")
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_file_keeps_the_contract_and_its_state_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/meta.db", dir.path().display());
    contract(streamhouse_metastore::open(&url).await.unwrap()).await;
    let reopened = streamhouse_metastore::open(&url).await.unwrap();
    assert_eq!(reopened.topics().await.unwrap().len(), 2);
}

#[tokio::test]
async fn postgres_keeps_the_contract() {
    let url = testing::fresh_postgres().await;
    contract(streamhouse_metastore::open(&url).await.unwrap()).await;
    // A second agent opening the same database finds the schema in place.
    let again = streamhouse_metastore::open(&url).await.unwrap();
    assert_eq!(again.topics().await.unwrap().len(), 2);
}

#[tokio::test]
async fn commits_to_one_partition_from_two_writers_never_both_land() {
    let url = testing::fresh_postgres().await;
    let (a, b) = (
        streamhouse_metastore::open(&url).await.unwrap(),
        streamhouse_metastore::open(&url).await.unwrap(),
    );
    a.ensure_topic("t", 1).await.unwrap();
    for round in 0..20i64 {
        let (oa, ob) = (object(&format!("a/{round}")), object(&format!("b/{round}")));
        let (ra, rb) = (
            [range("t", 0, round * 10, round * 10 + 10, 0)],
            [range("t", 0, round * 10, round * 10 + 10, 0)],
        );
        let (x, y) = tokio::join!(a.commit(&oa, &ra), b.commit(&ob, &rb));
        assert!(
            x.is_ok() != y.is_ok(),
            "round {round}: exactly one commit lands: {x:?} {y:?}"
        );
        assert!(matches!(
            x.err().or(y.err()),
            Some(StoreError::Conflict { .. })
        ));
    }
    assert_eq!(a.index("t", 0, 0, 100).await.unwrap().len(), 20);
}

#[tokio::test]
async fn bad_urls_and_unreachable_stores_are_typed_errors() {
    for url in ["mysql://x", "sqlite://", "", "postgres//nope"] {
        assert!(
            matches!(
                streamhouse_metastore::open(url).await,
                Err(StoreError::InvalidUrl { .. })
            ),
            "{url:?}"
        );
    }
    // Nothing listens on the port a just-closed listener had.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let error = streamhouse_metastore::open(&format!("postgres://u@127.0.0.1:{port}/db"))
        .await
        .err()
        .expect("nothing to connect to");
    assert!(error.is_retriable(), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A file that is not a database: said so at once, not after the pool's timeout.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(
        &file,
        "not a database, just text that is long enough to have a header",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let error = streamhouse_metastore::open(&format!("sqlite://{}", file.display()))
        .await
        .err()
        .expect("not a database");
    assert!(error.to_string().contains("not a database"), "{error}");
    assert!(!error.is_retriable(), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A file SQLite cannot create.
    let error = streamhouse_metastore::open("sqlite:///proc/nope/meta.db")
        .await
        .err()
        .expect("/proc is not writable");
    assert!(!error.is_retriable(), "{error}");
}

#[tokio::test]
async fn a_store_migrated_by_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/meta.db", dir.path().display());
    drop(streamhouse_metastore::open(&url).await.unwrap());
    // A newer build bumped the version.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO sh_schema (version) VALUES (99)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match streamhouse_metastore::open(&url).await {
        Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
        other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| ())),
    }
}

/// CI found it: on SQLite a transaction that reads before it writes (a commit checks its
/// object first) failed at once with "database is locked" when another connection wrote
/// meanwhile. Writers on one file now wait for each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_one_sqlite_file_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/meta.db", dir.path().display());
    let store = streamhouse_metastore::open(&url).await.unwrap();
    for topic in 0..8 {
        store.ensure_topic(&format!("t{topic}"), 1).await.unwrap();
    }
    let mut tasks = Vec::new();
    for topic in 0..8i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..25i64 {
                let name = format!("t{topic}");
                let key = format!("{name}/{round}");
                let r = range(&name, 0, round * 10, round * 10 + 10, 0);
                store.commit(&object(&key), &[r]).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for topic in 0..8 {
        let meta = store
            .partition(&format!("t{topic}"), 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(meta.high_watermark, 250);
    }
}

/// Found by starting the README's three agents at once: every store opened on a fresh SQLite
/// file switches it to WAL, which needs the file to itself, and the switch was made before
/// the busy timeout was set, so the second and third agent failed at once with "database is
/// locked". Stores opened together on one new file now wait for each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_together_on_a_new_sqlite_file_all_open() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/meta.db", dir.path().display());
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { streamhouse_metastore::open(&url).await })
            })
            .collect();
        for (i, open) in opens.into_iter().enumerate() {
            let store = open
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}, store {i}: {e}"));
            store.ensure_topic("t", 1).await.unwrap();
        }
    }
}

/// Registrations, leases and fencing, on one store.
async fn group_contract(store: Arc<dyn MetadataStore>) {
    const TTL: Duration = Duration::from_secs(60);
    store.ensure_topic("t", 2).await.unwrap();
    let eps = |n: u32| {
        vec![
            format!("grpc://127.0.0.1:{n}"),
            format!("quic://127.0.0.1:{n}"),
        ]
    };
    let now = store.heartbeat("g", 1, &eps(1), TTL).await.unwrap();
    store.heartbeat("g", 2, &eps(2), TTL).await.unwrap();
    // A member of another group is not listed.
    store.heartbeat("other", 3, &eps(3), TTL).await.unwrap();
    let view = store.group("g").await.unwrap();
    assert!(view.now_ms >= now);
    let live: Vec<u32> = view.live().map(|a| a.agent_id).collect();
    assert_eq!(live, [1, 2]);
    assert_eq!(view.agents[0].endpoints, eps(1));

    // The first taker gets epoch 1; another agent cannot take a held lease.
    let a = store.acquire("g", 1, "t", 0, TTL).await.unwrap().unwrap();
    assert_eq!(
        (a.lease.id, a.previous),
        (
            LeaseId {
                agent_id: 1,
                epoch: 1
            },
            None
        )
    );
    assert!(store.acquire("g", 2, "t", 0, TTL).await.unwrap().is_none());
    // Taken again by its holder: the same epoch.
    let again = store.acquire("g", 1, "t", 0, TTL).await.unwrap().unwrap();
    assert_eq!((again.lease.id.epoch, again.previous), (1, Some(1)));
    // A partition the store does not have cannot be leased.
    assert!(store.acquire("g", 1, "t", 9, TTL).await.is_err());

    // Renewal keeps what is held and reports what is not.
    let renewed = store
        .renew(1, &[("t".into(), 0, 1, 42), ("t".into(), 1, 1, 0)], TTL)
        .await
        .unwrap();
    assert!(renewed[0].is_some() && renewed[1].is_none());
    let view = store.group("g").await.unwrap();
    assert_eq!(view.holder("t", 0).unwrap().local_end, 42);
    assert!(view.holder("t", 1).is_none());

    // A commit under the held lease lands; released, the lease goes to agent 2 with a new
    // epoch, and a commit under the old one is fenced, writing nothing.
    let mut r = range("t", 0, 0, 10, 0);
    r.lease = Some(a.lease.id);
    store.commit(&object("g/1"), &[r]).await.unwrap();
    store.release(1, &[("t".into(), 0, 1)]).await.unwrap();
    let b = store.acquire("g", 2, "t", 0, TTL).await.unwrap().unwrap();
    assert_eq!(
        (b.lease.id, b.previous),
        (
            LeaseId {
                agent_id: 2,
                epoch: 2
            },
            Some(1)
        )
    );
    let mut stale = range("t", 0, 10, 20, 0);
    stale.lease = Some(a.lease.id);
    let mut other = range("t", 1, 0, 5, 100);
    other.lease = None;
    match store.commit(&object("g/2"), &[other, stale]).await {
        Err(StoreError::Fenced {
            partition: 0,
            epoch: 1,
            current,
            ..
        }) => assert_eq!(current, "2/2"),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(
        store
            .partition("t", 0)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        10
    );
    assert_eq!(
        store
            .partition("t", 1)
            .await
            .unwrap()
            .unwrap()
            .high_watermark,
        0
    );
    // The renewal of a lost lease fails.
    assert_eq!(
        store
            .renew(1, &[("t".into(), 0, 1, 10)], TTL)
            .await
            .unwrap(),
        [None]
    );

    // A lease that runs out can be taken by another agent, with a new epoch.
    let short = Duration::from_millis(1);
    store.acquire("g", 1, "t", 1, short).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = store.acquire("g", 2, "t", 1, TTL).await.unwrap().unwrap();
    assert_eq!((taken.lease.id.epoch, taken.previous), (2, Some(1)));

    // Leaving removes the registration; deleting the topic removes its leases.
    store.leave("g", 1).await.unwrap();
    let live: Vec<u32> = store
        .group("g")
        .await
        .unwrap()
        .live()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(live, [2]);
    store.delete_topic("t").await.unwrap();
    assert!(store.group("g").await.unwrap().leases.is_empty());
}

#[tokio::test]
async fn sqlite_keeps_the_group_contract() {
    group_contract(
        streamhouse_metastore::open("sqlite::memory:")
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn postgres_keeps_the_group_contract() {
    let url = testing::fresh_postgres().await;
    group_contract(streamhouse_metastore::open(&url).await.unwrap()).await;
}

/// Many agents racing for one free partition: exactly one gets each epoch (PostgreSQL reads
/// without locking; the compare-and-set decides).
#[tokio::test]
async fn racing_acquires_on_postgres_elect_one_holder() {
    let url = testing::fresh_postgres().await;
    let stores: Vec<_> = open_many(&url, 4).await;
    stores[0].ensure_topic("race", 1).await.unwrap();
    for round in 0..10 {
        let ttl = Duration::from_millis(200);
        let takes = stores.iter().enumerate().map(|(i, s)| {
            let s = s.clone();
            tokio::spawn(async move { s.acquire("g", i as u32, "race", 0, ttl).await })
        });
        let mut winners = 0;
        for take in takes.collect::<Vec<_>>() {
            if take.await.unwrap().unwrap().is_some() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn open_many(url: &str, n: usize) -> Vec<Arc<dyn MetadataStore>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(streamhouse_metastore::open(url).await.unwrap());
    }
    out
}

/// Agents of a group hand out producer ids at the same time: each id once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_handed_out_at_once_by_several_agents_are_distinct() {
    let dir = tempfile::tempdir().unwrap();
    distinct_producer_ids(&format!("sqlite://{}/meta.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_handed_out_at_once_on_postgres_are_distinct() {
    distinct_producer_ids(&testing::fresh_postgres().await).await;
}

async fn distinct_producer_ids(url: &str) {
    let stores = open_many(url, 4).await;
    let mut tasks = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.allocate_producer_id(&format!("p{i}")).await.unwrap()
            }));
        }
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 32);
}
