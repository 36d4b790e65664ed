//! The embedded job store: one redb file on local disk, no external service.
//!
//! Why redb: it is pure Rust (no C toolchain, a few seconds to build where bundled SQLite
//! takes about a minute on two cores), ACID with copy-on-write B-trees and a checksummed
//! commit, and `Durability::Immediate` means `fsync` before `commit` returns. We need a
//! key-value table, not SQL: the ordering the dispatcher wants lives in an in-memory index.
//!
//! **Group commit.** Every mutation goes to one writer thread over a channel. The writer
//! takes everything waiting, applies it in *one* write transaction and commits once (one
//! fsync), then answers every caller. Under load many enqueues share an fsync; alone, an
//! enqueue pays exactly one. Nobody is answered before the commit that holds their change.
//!
//! **Index.** The writer also keeps, in memory, the status/pool/priority of every job, the
//! per-pool ready queues ordered by (priority, age), the back-off timers and the
//! idempotency keys. It is rebuilt by scanning the table at open; jobs a crash left
//! `running` are put back to `queued` then (only one process can hold the file — redb locks
//! it — so nobody else is running them). The index is only touched by the writer thread and
//! by `stats`, under a mutex no request-path code holds for more than a map update.

use super::{unix_ms, Enqueued, Job, JobStatus, JobStore, QueueError, Stats};
use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

/// Most operations applied in one transaction (one fsync).
const MAX_BATCH: usize = 512;

fn store_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Store(e.to_string())
}

struct Meta {
    status: JobStatus,
    pool: String,
    priority: u64,
    created_ms: u64,
    not_before_ms: u64,
    expires_ms: Option<u64>,
    scope: String,
    idem: Option<String>,
}

#[derive(Default)]
struct Index {
    jobs: HashMap<String, Meta>,
    /// Per pool: (priority, created, id) of queued jobs that are due.
    ready: HashMap<String, BTreeSet<(u64, u64, String)>>,
    /// (not before, id) of queued jobs backing off.
    delayed: BTreeSet<(u64, String)>,
    idem: HashMap<(String, String), String>,
    queued: u64,
    running: u64,
}

impl Index {
    fn insert(&mut self, job: &Job) {
        self.remove(&job.id);
        let meta = Meta {
            status: job.status,
            pool: job.class.pool.clone(),
            priority: job.priority,
            created_ms: job.created_ms,
            not_before_ms: job.not_before_ms,
            expires_ms: job.expires_ms,
            scope: job.scope.clone(),
            idem: job.idempotency_key.clone(),
        };
        match job.status {
            JobStatus::Queued => {
                self.queued += 1;
                if job.not_before_ms > unix_ms() {
                    self.delayed.insert((job.not_before_ms, job.id.clone()));
                } else {
                    self.ready.entry(meta.pool.clone()).or_default().insert((
                        meta.priority,
                        meta.created_ms,
                        job.id.clone(),
                    ));
                }
            }
            JobStatus::Running => self.running += 1,
            _ => {}
        }
        if let Some(key) = &meta.idem {
            self.idem
                .insert((meta.scope.clone(), key.clone()), job.id.clone());
        }
        self.jobs.insert(job.id.clone(), meta);
    }

    fn remove(&mut self, id: &str) {
        let Some(meta) = self.jobs.remove(id) else {
            return;
        };
        match meta.status {
            JobStatus::Queued => {
                self.queued = self.queued.saturating_sub(1);
                self.delayed.remove(&(meta.not_before_ms, id.to_string()));
                if let Some(set) = self.ready.get_mut(&meta.pool) {
                    set.remove(&(meta.priority, meta.created_ms, id.to_string()));
                }
            }
            JobStatus::Running => self.running = self.running.saturating_sub(1),
            _ => {}
        }
        if let Some(key) = meta.idem {
            let k = (meta.scope, key);
            if self.idem.get(&k).map(String::as_str) == Some(id) {
                self.idem.remove(&k);
            }
        }
    }

    /// Move jobs whose back-off has passed into their ready queue.
    fn promote(&mut self, now: u64) {
        while let Some((due, id)) = self.delayed.first().cloned() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, id.clone()));
            if let Some(m) = self.jobs.get(&id) {
                self.ready.entry(m.pool.clone()).or_default().insert((
                    m.priority,
                    m.created_ms,
                    id,
                ));
            }
        }
    }
}

enum Op {
    Enqueue(Box<Job>, u64, oneshot::Sender<Result<Enqueued, QueueError>>),
    Claim(String, usize, oneshot::Sender<Result<Vec<Job>, QueueError>>),
    Update(Box<Job>, oneshot::Sender<Result<(), QueueError>>),
    Cancel(
        String,
        String,
        u64,
        oneshot::Sender<Result<Option<Job>, QueueError>>,
    ),
    Sweep(oneshot::Sender<Result<usize, QueueError>>),
}

/// The redb-backed store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    ops: Mutex<mpsc::Sender<Op>>,
    index: Arc<Mutex<Index>>,
}

impl EmbeddedStore {
    /// Open (or create) the store at `path`, recover jobs left running and start the writer.
    pub fn open(path: &Path) -> Result<EmbeddedStore, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| QueueError::Store(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| QueueError::Store(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        let index = Arc::new(Mutex::new(recover(&db)?));
        let (tx, rx) = mpsc::channel();
        let (wdb, windex) = (db.clone(), index.clone());
        std::thread::Builder::new()
            .name("switchyard-queue-writer".into())
            .spawn(move || writer(wdb, windex, rx))
            .map_err(store_err)?;
        Ok(EmbeddedStore {
            db,
            ops: Mutex::new(tx),
            index,
        })
    }

    fn send(&self, op: Op) -> Result<(), QueueError> {
        let tx = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(op)
            .map_err(|_| QueueError::Store("the queue writer has stopped".into()))
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T, QueueError>>) -> Result<T, QueueError> {
    rx.await
        .map_err(|_| QueueError::Store("the queue writer dropped the request".into()))?
}

/// Scan the table into a fresh index; jobs left `running` by a crash go back to `queued`.
fn recover(db: &Database) -> Result<Index, QueueError> {
    let mut index = Index::default();
    let mut requeue = Vec::new();
    {
        let tx = db.begin_write().map_err(store_err)?;
        {
            let table = tx.open_table(JOBS).map_err(store_err)?;
            for entry in table.iter().map_err(store_err)? {
                let (k, v) = entry.map_err(store_err)?;
                match Job::decode(v.value()) {
                    Ok(mut job) => {
                        if job.status == JobStatus::Running {
                            job.status = JobStatus::Queued;
                            requeue.push(job.clone());
                        }
                        index.insert(&job);
                    }
                    Err(e) => {
                        tracing::error!(id = k.value(), error = %e, "skipping unreadable job record")
                    }
                }
            }
        }
        {
            let mut table = tx.open_table(JOBS).map_err(store_err)?;
            for job in &requeue {
                table
                    .insert(job.id.as_str(), job.encode().as_slice())
                    .map_err(store_err)?;
            }
        }
        tx.commit().map_err(store_err)?;
    }
    if !requeue.is_empty() {
        tracing::warn!(
            jobs = requeue.len(),
            "requeued jobs that were running when the gateway stopped"
        );
    }
    Ok(index)
}

type Reply = Box<dyn FnOnce(Option<&QueueError>) + Send>;

fn writer(db: Arc<Database>, index: Arc<Mutex<Index>>, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let result = apply(&db, &index, batch, &mut replies);
        if let Err(e) = &result {
            tracing::error!(error = %e, "queue commit failed; rebuilding the index from disk");
            if let Ok(fresh) = recover_readonly(&db) {
                *index.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
        }
        for reply in replies {
            reply(result.as_ref().err());
        }
    }
}

/// Rebuild the index without changing anything (after a failed commit).
fn recover_readonly(db: &Database) -> Result<Index, QueueError> {
    let mut index = Index::default();
    let tx = db.begin_read().map_err(store_err)?;
    let table = tx.open_table(JOBS).map_err(store_err)?;
    for entry in table.iter().map_err(store_err)? {
        let (_, v) = entry.map_err(store_err)?;
        if let Ok(job) = Job::decode(v.value()) {
            index.insert(&job);
        }
    }
    Ok(index)
}

/// Apply a batch of operations in one durable transaction. Each operation pushes a reply
/// closure, called after the commit with its error (if the commit failed).
fn apply(
    db: &Database,
    index: &Mutex<Index>,
    batch: Vec<Op>,
    replies: &mut Vec<Reply>,
) -> Result<(), QueueError> {
    let mut tx = db.begin_write().map_err(store_err)?;
    tx.set_durability(Durability::Immediate);
    {
        let mut table = tx.open_table(JOBS).map_err(store_err)?;
        let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_ms();
        for op in batch {
            match op {
                Op::Enqueue(job, max_jobs, done) => {
                    let existing = job
                        .idempotency_key
                        .as_ref()
                        .and_then(|k| idx.idem.get(&(job.scope.clone(), k.clone())).cloned());
                    let outcome = if let Some(id) = existing {
                        match table.get(id.as_str()).map_err(store_err)? {
                            Some(v) => Job::decode(v.value()).map(Enqueued::Existing),
                            None => Err(QueueError::Store("idempotency key points nowhere".into())),
                        }
                    } else if idx.queued + idx.running >= max_jobs {
                        Err(QueueError::Full(max_jobs))
                    } else {
                        table
                            .insert(job.id.as_str(), job.encode().as_slice())
                            .map_err(store_err)?;
                        idx.insert(&job);
                        Ok(Enqueued::Created(*job))
                    };
                    replies.push(Box::new(move |err| {
                        let _ = done.send(match err {
                            Some(e) => Err(QueueError::Store(e.to_string())),
                            None => outcome,
                        });
                    }));
                }
                Op::Claim(pool, max, done) => {
                    idx.promote(now);
                    let mut ids = Vec::new();
                    if let Some(set) = idx.ready.get(&pool) {
                        ids.extend(set.iter().take(max).map(|(_, _, id)| id.clone()));
                    }
                    let mut jobs = Vec::with_capacity(ids.len());
                    for id in ids {
                        let Some(v) = table.get(id.as_str()).map_err(store_err)? else {
                            idx.remove(&id);
                            continue;
                        };
                        let Ok(mut job) = Job::decode(v.value()) else {
                            drop(v);
                            idx.remove(&id);
                            continue;
                        };
                        drop(v);
                        job.status = JobStatus::Running;
                        job.attempts += 1;
                        job.started_ms = Some(now);
                        table
                            .insert(job.id.as_str(), job.encode().as_slice())
                            .map_err(store_err)?;
                        idx.insert(&job);
                        jobs.push(job);
                    }
                    replies.push(Box::new(move |err| {
                        let _ = done.send(match err {
                            Some(e) => Err(QueueError::Store(e.to_string())),
                            None => Ok(jobs),
                        });
                    }));
                }
                Op::Update(job, done) => {
                    table
                        .insert(job.id.as_str(), job.encode().as_slice())
                        .map_err(store_err)?;
                    idx.insert(&job);
                    replies.push(Box::new(move |err| {
                        let _ = done.send(match err {
                            Some(e) => Err(QueueError::Store(e.to_string())),
                            None => Ok(()),
                        });
                    }));
                }
                Op::Cancel(id, scope, ttl_ms, done) => {
                    let found = match table.get(id.as_str()).map_err(store_err)? {
                        Some(v) => Some(Job::decode(v.value())?),
                        None => None,
                    };
                    let outcome = match found {
                        Some(mut job) if job.scope == scope && !expired(&job, now) => {
                            if job.status == JobStatus::Queued {
                                job.status = JobStatus::Cancelled;
                                job.finished_ms = Some(now);
                                job.expires_ms = Some(now + ttl_ms);
                                table
                                    .insert(job.id.as_str(), job.encode().as_slice())
                                    .map_err(store_err)?;
                                idx.insert(&job);
                            }
                            Some(job)
                        }
                        _ => None,
                    };
                    replies.push(Box::new(move |err| {
                        let _ = done.send(match err {
                            Some(e) => Err(QueueError::Store(e.to_string())),
                            None => Ok(outcome),
                        });
                    }));
                }
                Op::Sweep(done) => {
                    let expired_ids: Vec<String> = idx
                        .jobs
                        .iter()
                        .filter(|(_, m)| {
                            m.status.is_final() && m.expires_ms.is_some_and(|e| e <= now)
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in &expired_ids {
                        table.remove(id.as_str()).map_err(store_err)?;
                        idx.remove(id);
                    }
                    let n = expired_ids.len();
                    replies.push(Box::new(move |err| {
                        let _ = done.send(match err {
                            Some(e) => Err(QueueError::Store(e.to_string())),
                            None => Ok(n),
                        });
                    }));
                }
            }
        }
    }
    tx.commit().map_err(store_err)
}

fn expired(job: &Job, now: u64) -> bool {
    job.expires_ms.is_some_and(|e| e <= now)
}

#[async_trait]
impl JobStore for EmbeddedStore {
    async fn enqueue(&self, job: Job, max_jobs: u64) -> Result<Enqueued, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Enqueue(Box::new(job), max_jobs, tx))?;
        answer(rx).await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, QueueError> {
        let db = self.db.clone();
        let id = id.to_string();
        // Reads are a B-tree lookup in a memory-mapped file; off the async threads anyway.
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(store_err)?;
            let table = tx.open_table(JOBS).map_err(store_err)?;
            let job = match table.get(id.as_str()).map_err(store_err)? {
                Some(v) => Job::decode(v.value())?,
                None => return Ok(None),
            };
            Ok((!expired(&job, unix_ms())).then_some(job))
        })
        .await
        .map_err(store_err)?
    }

    async fn cancel(
        &self,
        id: &str,
        scope: &str,
        ttl: Duration,
    ) -> Result<Option<Job>, QueueError> {
        let (tx, rx) = oneshot::channel();
        let ttl_ms = ttl.as_millis() as u64;
        self.send(Op::Cancel(id.to_string(), scope.to_string(), ttl_ms, tx))?;
        answer(rx).await
    }

    async fn claim(
        &self,
        pool: &str,
        max: usize,
        _lease: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        // One process owns the file, so a lease is not needed: start-up recovery requeues
        // what a crash left running.
        {
            let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
            idx.promote(unix_ms());
            if idx.ready.get(pool).is_none_or(|s| s.is_empty()) {
                return Ok(Vec::new());
            }
        }
        let (tx, rx) = oneshot::channel();
        self.send(Op::Claim(pool.to_string(), max, tx))?;
        answer(rx).await
    }

    async fn update(&self, job: &Job) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Update(Box::new(job.clone()), tx))?;
        answer(rx).await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = idx
            .jobs
            .values()
            .filter(|m| m.status == JobStatus::Queued)
            .map(|m| m.created_ms)
            .min();
        Ok(Stats {
            queued: idx.queued,
            running: idx.running,
            oldest_created_ms: oldest,
        })
    }

    async fn sweep(&self) -> Result<usize, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Sweep(tx))?;
        answer(rx).await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{JobClass, JobRequest};
    use bytes::Bytes;

    fn job(pool: &str) -> Job {
        Job {
            id: Job::new_id(),
            scope: "anonymous".into(),
            idempotency_key: None,
            status: JobStatus::Queued,
            priority: 1,
            created_ms: unix_ms(),
            started_ms: None,
            finished_ms: None,
            expires_ms: None,
            attempts: 0,
            not_before_ms: 0,
            last_error: None,
            request: JobRequest {
                method: "POST".into(),
                path: "/v1/chat/completions".into(),
                headers: Vec::new(),
            },
            class: JobClass {
                route: "r".into(),
                tier: "batch".into(),
                model: "m".into(),
                region: "us".into(),
                pool: pool.into(),
                client_ip: "127.0.0.1".into(),
            },
            callback_url: None,
            result: None,
            body: Bytes::from_static(b"{}"),
            result_body: Bytes::new(),
        }
    }

    /// An enqueued job is readable as soon as `enqueue` returns, whatever the dispatcher
    /// is doing to other jobs at the same time (claims and updates share the writer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_enqueued_job_is_readable_at_once_under_concurrent_dispatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("q.redb")).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dispatcher = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for mut j in store.claim("p", 8, Duration::from_secs(60)).await.unwrap() {
                        j.status = JobStatus::Succeeded;
                        j.expires_ms = Some(unix_ms() + 60_000);
                        store.update(&j).await.unwrap();
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let j = job("p");
                    let id = j.id.clone();
                    store.enqueue(j, 1_000_000).await.unwrap();
                    assert!(store.get(&id).await.unwrap().is_some(), "{id} not readable");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        dispatcher.await.unwrap();
    }
}
