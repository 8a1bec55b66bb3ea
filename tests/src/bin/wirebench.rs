//! `persona-wirebench`: measures what one real agent costs on the wire. It starts a real
//! coordinator and a real agent in this process, on loopback, with the production
//! settings (1 s samples, 10 s batches), and drives this machine from idle to busy (CPU
//! burners, a disk writer with fsync, loopback TCP traffic) and back. It reports bytes
//! per sample of the batch frames (codec, framing, metric ids and MessagePack envelope)
//! and of the UDP payload QUIC sent (plus IP/UDP headers), and the coordinator's ingest
//! cost per batch. Figures go to docs/BENCHMARKS.md.

#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use persona_agent::config::AgentConfig;
use persona_coordinator::ServerSettings;
use persona_coordinator::{ServeOptions, start};
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs CPU, disk and loopback network load until `stop`, all bounded.
fn busy(stop: Arc<AtomicBool>, dir: std::path::PathBuf) -> Vec<std::thread::JoinHandle<()>> {
    let mut hs = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        hs.push(std::thread::spawn(move || {
            let mut x: u64 = 1;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100_000 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                }
                std::hint::black_box(x);
            }
        }));
    }
    let s = stop.clone();
    hs.push(std::thread::spawn(move || {
        let chunk = vec![0x5au8; 4 << 20];
        let path = dir.join("wirebench.dat");
        let mut written = 0u64;
        while !s.load(Ordering::Relaxed) && written < (1 << 30) {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
            {
                for _ in 0..8 {
                    let _ = f.write_all(&chunk);
                    written += chunk.len() as u64;
                }
                let _ = f.sync_all();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = std::fs::remove_file(&path);
    }));
    let s = stop;
    hs.push(std::thread::spawn(move || {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let reader = std::thread::spawn(move || {
            if let Ok((mut c, _)) = listener.accept() {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        if let Ok(mut c) = std::net::TcpStream::connect(addr) {
            let buf = vec![1u8; 1 << 16];
            while !s.load(Ordering::Relaxed) {
                // About 40 MB/s, so the link shows traffic without starving the rest.
                for _ in 0..64 {
                    let _ = c.write_all(&buf);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = reader.join();
    }));
    hs
}

fn main() {
    let phase = arg("--phase-seconds", 30);
    let json_out = std::env::args().any(|a| a == "--json");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let report = rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let coord = start(
            ServeOptions {
                data_dir: dir.path().join("coord"),
                listen: "127.0.0.1:0".parse().expect("addr"),
                http: "127.0.0.1:0".parse().expect("addr"),
                advertise: None,
                settings: ServerSettings::default(),
            },
            rx,
        )
        .await
        .expect("coordinator");
        let (token, _) = coord.app.store.create_token(60_000, 1).expect("token");
        let agent_dir = dir.path().join("agent");
        persona_agent::enroll::enroll(persona_agent::enroll::EnrollOptions {
            coordinator: coord.quic_addr.to_string(),
            token,
            ca_hash: coord.ca_hash.clone(),
            state_dir: agent_dir.clone(),
        })
        .await
        .expect("enroll");
        let config = AgentConfig {
            coordinator: Some(coord.quic_addr.to_string()),
            state_dir: agent_dir,
            ..AgentConfig::default()
        };
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let agent = tokio::spawn(persona_agent::daemon::run_report(config, async move {
            let _ = stop_rx.changed().await;
        }));
        let t0 = Instant::now();
        eprintln!("idle phase ({phase} s)");
        tokio::time::sleep(Duration::from_secs(phase)).await;
        eprintln!("busy phase ({phase} s)");
        let stop = Arc::new(AtomicBool::new(false));
        let load = busy(stop.clone(), dir.path().to_owned());
        tokio::time::sleep(Duration::from_secs(phase)).await;
        stop.store(true, Ordering::Relaxed);
        for h in load {
            let _ = h.join();
        }
        eprintln!("idle phase ({phase} s)");
        tokio::time::sleep(Duration::from_secs(phase)).await;
        let _ = stop_tx.send(true);
        let r = agent.await.expect("agent task").expect("agent run");
        let s = &coord.app.stats;
        let batches = s.batches.load(Ordering::Relaxed);
        let samples = s.samples.load(Ordering::Relaxed);
        let ingest_ns = s.ingest_nanos.load(Ordering::Relaxed);
        let _ = tx.send(true);
        let elapsed = t0.elapsed().as_secs_f64();
        coord.wait().await;
        (r, batches, samples, ingest_ns, elapsed)
    });
    let (r, batches, samples, ingest_ns, elapsed) = report;
    let per = |b: u64| b as f64 / samples.max(1) as f64;
    let doc = json!({
        "seconds": elapsed,
        "samples_taken": r.samples,
        "batches": batches,
        "values_stored": samples,
        "values_per_batch": samples as f64 / batches.max(1) as f64,
        "batch_frame_bytes": r.link.batch_bytes,
        "bytes_per_value_frames": per(r.link.batch_bytes),
        "udp_payload_tx_bytes": r.link.udp_tx_bytes,
        "bytes_per_value_udp_payload": per(r.link.udp_tx_bytes),
        "udp_payload_rx_bytes": r.link.udp_rx_bytes,
        "reconnects": r.link.reconnects,
        "ingest_ms_per_batch": ingest_ns as f64 / 1e6 / batches.max(1) as f64,
        "skipped_ticks": r.skipped_ticks,
    });
    if json_out {
        println!("{doc}");
    } else {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
}
