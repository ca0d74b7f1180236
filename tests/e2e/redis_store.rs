//! The Redis state store against a real `redis-server`: compare-and-set, isolation between
//! tenants and sessions, quotas, integrity checks, two runtimes sharing one session, and a
//! clear error when Redis is not there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir::{
    CasOutcome, ErrorKind, RedisConfig, RedisStateStore, SessionKey, SessionQuota, StateStore,
    StoredState, codes,
};
use weir_tests::{PluginFolder, RedisServer, builder};

async fn store(server: &RedisServer) -> RedisStateStore {
    RedisStateStore::connect(&RedisConfig::new(server.url()), SessionQuota::default())
        .await
        .expect("Redis is reachable")
}

fn state(version: u64, n: i64) -> StoredState {
    StoredState {
        version,
        state: json!({"n": n, "metadata": {"version": version}}),
    }
}

#[tokio::test]
async fn compare_and_set_stores_once_and_refuses_stale_writers() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let key = SessionKey::new("acme", "s1");
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(
        store
            .compare_and_set(&key, None, state(1, 1))
            .await
            .unwrap(),
        CasOutcome::Stored
    );
    assert_eq!(
        store
            .compare_and_set(&key, None, state(1, 9))
            .await
            .unwrap(),
        CasOutcome::Conflict { current: Some(1) }
    );
    assert_eq!(
        store
            .compare_and_set(&key, Some(1), state(2, 2))
            .await
            .unwrap(),
        CasOutcome::Stored
    );
    assert_eq!(
        store
            .compare_and_set(&key, Some(1), state(2, 9))
            .await
            .unwrap(),
        CasOutcome::Conflict { current: Some(2) }
    );
    assert_eq!(store.get(&key).await.unwrap(), Some(state(2, 2)));
    assert!(store.delete(&key).await.unwrap());
    assert_eq!(store.get(&key).await.unwrap(), None);
}

#[tokio::test]
async fn no_choice_of_names_makes_two_sessions_share_data() {
    let server = RedisServer::start();
    let store = store(&server).await;
    // Separators in names cannot collide: tenant "a:b" + session "c" vs "a" + "b:c".
    let one = SessionKey::new("a:b", "c");
    let two = SessionKey::new("a", "b:c");
    store
        .kv_set(&one, "k".into(), b"one".to_vec())
        .await
        .unwrap();
    store
        .compare_and_set(&one, None, state(1, 1))
        .await
        .unwrap();
    assert_eq!(store.kv_get(&two, "k").await.unwrap(), None);
    assert_eq!(store.get(&two).await.unwrap(), None);
    assert_eq!(
        store.kv_get(&one, "k").await.unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(store.kv_keys(&one).await.unwrap(), ["k"]);
}

#[tokio::test]
async fn the_session_quota_holds_in_redis() {
    let server = RedisServer::start();
    let quota = SessionQuota {
        max_key_bytes: 8,
        max_value_bytes: 8,
        max_session_bytes: 12,
    };
    let store = RedisStateStore::connect(&RedisConfig::new(server.url()), quota)
        .await
        .unwrap();
    let key = SessionKey::new("t", "s");
    store.kv_set(&key, "k1".into(), vec![0; 8]).await.unwrap();
    let err = store
        .kv_set(&key, "k2".into(), vec![0; 8])
        .await
        .unwrap_err();
    assert_eq!(err.code.as_deref(), Some(codes::QUOTA_EXCEEDED));
    // Rewriting an entry counts only the difference.
    store.kv_set(&key, "k1".into(), vec![1; 6]).await.unwrap();
    store.kv_delete(&key, "k1").await.unwrap();
    store.kv_set(&key, "k2".into(), vec![0; 8]).await.unwrap();
    assert_eq!(store.kv_keys(&key).await.unwrap(), ["k2"]);
}

/// H3: a session's keys in Redis expire once nobody writes them for the idle expiry, and
/// every write pushes the expiry of all three back (state, entries, their byte count).
#[tokio::test]
async fn a_sessions_keys_expire_after_its_idle_time_and_each_write_renews_them() {
    let server = RedisServer::start();
    let idle = Duration::from_secs(3600);
    let store = store(&server).await.with_idle_expiry(idle);
    let key = SessionKey::new("t", "s");
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys = [
        "weir:_:state:1:t:s",
        "weir:_:kv:1:t:s",
        "weir:_:kvbytes:1:t:s",
    ];
    // The multiplexed connection is a cheap handle: each use takes its own clone.
    let reader = connection.clone();
    let ttls = || {
        let mut connection = reader.clone();
        async move {
            let mut ttls = Vec::new();
            for key in keys {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                ttls.push(ttl);
            }
            ttls
        }
    };
    store.kv_set(&key, "k".into(), b"v".to_vec()).await.unwrap();
    // No state yet (-2: no key); the entries and their count expire within the hour.
    let after_kv = ttls().await;
    assert_eq!(after_kv[0], -2, "{after_kv:?}");
    assert!(
        after_kv[1..].iter().all(|&t| t > 0 && t <= 3_600_000),
        "{after_kv:?}"
    );
    // Shorten them behind the store's back: the next write renews all three.
    for key in &keys[1..] {
        let _: () = redis::cmd("PEXPIRE")
            .arg(*key)
            .arg(5_000)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    store
        .compare_and_set(&key, None, state(1, 1))
        .await
        .unwrap();
    let after_state = ttls().await;
    assert!(
        after_state.iter().all(|&t| t > 3_000_000 && t <= 3_600_000),
        "{after_state:?}"
    );
}

#[tokio::test]
async fn a_state_changed_behind_weirs_back_fails_its_integrity_check() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let key = SessionKey::new("t", "s");
    store
        .compare_and_set(&key, None, state(1, 1))
        .await
        .unwrap();
    // Someone edits the JSON directly in Redis.
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("weir:_:state:1:t:s")
        .arg("state")
        .arg(r#"{"n":1000,"metadata":{"version":1}}"#)
        .query_async(&mut connection)
        .await
        .unwrap();
    let err = store.get(&key).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Execution);
    assert_eq!(err.code.as_deref(), Some(codes::STATE_CORRUPTED));
}

/// A started runtime over `folder` keeping session state in `store`.
async fn runtime_on(folder: &PluginFolder, store: Arc<RedisStateStore>) -> weir::Runtime {
    let runtime = builder(folder.path())
        .state_store(store)
        .build()
        .await
        .unwrap();
    runtime.start();
    runtime
}

#[tokio::test]
async fn two_runtimes_share_a_session_and_a_stale_one_gets_a_conflict() {
    let server = RedisServer::start();
    let folder = PluginFolder::with(&["increment", "tally"]);
    let a = runtime_on(&folder, Arc::new(store(&server).await)).await;
    let b = runtime_on(&folder, Arc::new(store(&server).await)).await;
    let first = a
        .execute_in_session("shared", "increment", json!({"count": 1}))
        .await
        .unwrap();
    assert!(first.ok);
    // The other runtime continues from the stored state.
    let second = b
        .execute_in_session("shared", "increment", json!({"count": 5}))
        .await
        .unwrap();
    assert_eq!(second.state["metadata"]["version"], 2);
    // Both start from revision 2; whichever writes second loses.
    let base = second.state.clone();
    let winner = a
        .execute_in_session("shared", "increment", base.clone())
        .await
        .unwrap();
    let loser = b
        .execute_in_session("shared", "increment", base)
        .await
        .unwrap();
    assert!(winner.ok);
    assert_eq!(
        loser.error.unwrap().code.as_deref(),
        Some(codes::STATE_CONFLICT)
    );
    // Key-value data is shared too.
    a.execute_in_session("shared", "tally", json!({}))
        .await
        .unwrap();
    let tally = b
        .execute_in_session("shared", "tally", json!({}))
        .await
        .unwrap();
    assert_eq!(tally.state["tally"], 2);
    // Stopping the session in one runtime removes it for both.
    assert!(b.stop_session("default", "shared").await.removed_state);
    assert!(a.session_state("default", "shared").await.is_none());
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_within_the_connect_timeout() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}/0"));
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = RedisStateStore::connect(&config, SessionQuota::default())
        .await
        .unwrap_err();
    assert!(matches!(err, weir::Error::Redis { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
