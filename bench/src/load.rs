//! The load generator: open-loop fixed rates (latency counted from when a
//! request was due, so a slow server cannot hide its queue), a closed loop
//! for the most a server carries, sequential streamed time to first chunk
//! on one kept-alive connection, and many held-open streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tokio::sync::Semaphore;

/// Where to send requests and as whom.
#[derive(Clone)]
pub struct Target {
    /// Full URL of the chat completions endpoint; with several (replicas
    /// behind no balancer), requests take them in turn.
    pub urls: Vec<String>,
    pub next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub api_key: Option<String>,
    /// The `model` field to send.
    pub model: String,
}

pub fn client(max_idle: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_idle)
        .timeout(Duration::from_secs(120))
        .build()
        .context("build the HTTP client")
}

pub fn body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence, please."}],
        "max_tokens": 16,
        "stream": stream,
    })
    .to_string()
}

fn request(client: &reqwest::Client, t: &Target, body: String) -> reqwest::RequestBuilder {
    let i = t.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = client
        .post(&t.urls[i % t.urls.len()])
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = &t.api_key {
        r = r.bearer_auth(k);
    }
    r
}

/// One whole non-streamed request: OK when the status is 200 and the body
/// reads to the end.
async fn one(client: &reqwest::Client, t: &Target, body: String) -> bool {
    match request(client, t, body).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        Ok(_) | Err(_) => false,
    }
}

/// Latencies of one run, sorted, and its errors.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Sample {
    fn finish(mut self) -> Self {
        self.latencies.sort_unstable();
        self
    }
    pub fn ok(&self) -> u64 {
        self.latencies.len() as u64
    }
    /// The q-quantile (0..=1) in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1e3
    }
    pub fn rate(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How late tokio's timer may wake a task without it counting as
/// queueing.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// `rate` requests a second for `secs`, each sent when due (at most
/// `max_inflight` open; beyond that a request waits, and its wait counts).
pub async fn fixed_rate(
    client: &reqwest::Client,
    t: &Target,
    rate: u32,
    secs: f64,
    max_inflight: usize,
) -> Sample {
    let n = (f64::from(rate) * secs) as u64;
    let body = body(&t.model, false);
    let permits = Arc::new(Semaphore::new(max_inflight));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, t, body) = (client.clone(), t.clone(), body.clone());
        tasks.spawn(async move {
            // Latency counts from when the request was due, less the
            // timer's own lateness (tokio's timer wheel ticks each
            // millisecond): queueing behind earlier requests still counts.
            let sent = Instant::now();
            let late = sent.saturating_duration_since(due);
            let ok = one(&client, &t, body).await;
            drop(permit);
            (ok, sent.elapsed() + late.saturating_sub(TIMER_SLACK))
        });
    }
    let mut s = Sample::default();
    // Bounded: what has not answered DRAIN after the last request was due
    // counts as an error (a server far past its limit would otherwise keep
    // the run going for minutes).
    let deadline = tokio::time::Instant::now() + DRAIN;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok((true, d)))) => s.latencies.push(d),
            Ok(Some(_)) => s.errors += 1,
            Ok(None) => break,
            Err(_) => {
                s.errors += tasks.len() as u64;
                tasks.abort_all();
                break;
            }
        }
    }
    s.elapsed = start.elapsed().min(Duration::from_secs_f64(secs) + DRAIN);
    s.finish()
}

/// How long a fixed-rate step waits for answers after its last request.
const DRAIN: Duration = Duration::from_secs(15);

/// `conns` clients each sending back to back for `secs`.
pub async fn closed_loop(client: &reqwest::Client, t: &Target, conns: usize, secs: f64) -> Sample {
    let body = body(&t.model, false);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (client, t, body) = (client.clone(), t.clone(), body.clone());
        tasks.spawn(async move {
            let mut s = Sample::default();
            while Instant::now() < end {
                let at = Instant::now();
                if one(&client, &t, body.clone()).await {
                    s.latencies.push(at.elapsed());
                } else {
                    s.errors += 1;
                }
            }
            s
        });
    }
    let mut all = Sample::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            all.latencies.extend(s.latencies);
            all.errors += s.errors;
        }
    }
    all.elapsed = start.elapsed();
    all.finish()
}

/// `n` streamed requests one after another on one kept-alive connection:
/// the time from sending each to the first `data:` line with content.
pub async fn first_chunk(client: &reqwest::Client, t: &Target, n: usize) -> Sample {
    let body = body(&t.model, true);
    let start = Instant::now();
    let mut s = Sample::default();
    for _ in 0..n {
        let at = Instant::now();
        let Ok(r) = request(client, t, body.clone()).send().await else {
            s.errors += 1;
            continue;
        };
        if !r.status().is_success() {
            s.errors += 1;
            continue;
        }
        let mut stream = r.bytes_stream();
        let mut seen = Vec::new();
        let mut first = None;
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else {
                failed = true;
                break;
            };
            if first.is_none() {
                seen.extend_from_slice(&chunk);
                if contains(&seen, b"\"content\"") {
                    first = Some(at.elapsed());
                }
            }
        }
        match first {
            Some(d) if !failed => s.latencies.push(d),
            _ => s.errors += 1,
        }
    }
    s.elapsed = start.elapsed();
    s.finish()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Held streams: how many ended with `[DONE]`, and how many failed.
#[derive(Debug, Default)]
pub struct Held {
    pub done: u64,
    pub errors: u64,
}

/// Sends `n` streamed requests at once (their upstream holds the tokens
/// back), runs `while_open`, then reads every stream to its end.
pub async fn held_streams<Fut>(
    client: &reqwest::Client,
    t: &Target,
    n: usize,
    while_open: Fut,
) -> Held
where
    Fut: std::future::Future<Output = ()>,
{
    let body = body(&t.model, true);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, t, body) = (client.clone(), t.clone(), body.clone());
        tasks.spawn(async move {
            let r = request(&client, &t, body).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let bytes = r.bytes().await.ok()?;
            Some(contains(&bytes, b"[DONE]"))
        });
    }
    while_open.await;
    let mut h = Held::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Some(true)) => h.done += 1,
            _ => h.errors += 1,
        }
    }
    h
}
