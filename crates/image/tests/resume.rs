//! A connection that drops in the middle of a layer: the download resumes
//! with a Range request from the bytes it has, and the result verifies.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use sbxrun_image::{resolve, Event, Progress};

/// Blob starts (digest, resumed_at) and, per start, the first `done` after it.
#[derive(Default)]
struct Starts(RefCell<Vec<(String, u64)>>, RefCell<Vec<(String, u64)>>);

impl Progress for Starts {
    fn event(&self, e: &Event) {
        match e {
            Event::BlobStart {
                digest, resumed_at, ..
            } => {
                self.0.borrow_mut().push((digest.clone(), *resumed_at));
                self.1.borrow_mut().push((digest.clone(), u64::MAX));
            }
            Event::BlobBytes { digest, done, .. } => {
                if let Some(last) = self
                    .1
                    .borrow_mut()
                    .iter_mut()
                    .rev()
                    .find(|(d, _)| d == digest)
                {
                    last.1 = last.1.min(*done);
                }
            }
            _ => {}
        }
    }
}

/// Forwards 127.0.0.1 connections to `upstream`; the first response to a
/// request for `blob` is cut after `keep` bytes.
fn cutting_proxy(upstream: String, blob: String, keep: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cut_done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().take(64) {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let armed = Arc::new(AtomicBool::new(false));
            // client → server, arming the cut when the blob is asked for.
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (armed_w, cut_w, blob_w) = (armed.clone(), cut_done.clone(), blob.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.contains(&blob_w)
                        && text.starts_with("GET")
                        && !cut_w.swap(true, Ordering::SeqCst)
                    {
                        armed_w.store(true, Ordering::SeqCst);
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Write);
            });
            // server → client, cutting both ways once `keep` bytes went by.
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut sent_armed = 0usize;
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut end = n;
                    if armed.load(Ordering::SeqCst) {
                        end = n.min(keep.saturating_sub(sent_armed));
                        sent_armed += end;
                    }
                    if c_out.write_all(&buf[..end]).is_err() || end < n {
                        break;
                    }
                }
                let _ = c_out.shutdown(Shutdown::Both);
                let _ = s_in.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn dropped_connection_mid_layer_resumes_from_where_it_stopped() {
    let reg = Registry::start(None);
    let layout = tempfile::tempdir().unwrap();
    // Bytes gzip cannot shrink, so the layer is big on the wire.
    let mut noise = Vec::with_capacity(2 << 20);
    let mut x: u32 = 12345;
    for _ in 0..(2 << 20) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let layer = gz_layer(&[E::File("noise", &noise)]);
    let layer_digest = sha(&layer.blob);
    add_image(layout.path(), "v1", &[layer], "amd64");
    reg.push(layout.path(), "v1", "big/app", None);

    let proxy = cutting_proxy(reg.addr.clone(), layer_digest.clone(), 300_000);
    let cache = tempfile::tempdir().unwrap();
    let starts = Starts::default();
    let image = resolve(
        &format!("{proxy}/big/app:v1"),
        &options(cache.path()),
        &starts,
    )
    .unwrap();
    let first_done: Vec<u64> = starts
        .1
        .borrow()
        .iter()
        .filter(|(d, _)| *d == layer_digest)
        .map(|(_, n)| *n)
        .collect();
    let starts = starts.0.into_inner();
    let resumed: Vec<u64> = starts
        .iter()
        .filter(|(d, _)| *d == layer_digest)
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(resumed.len(), 2, "{starts:?}");
    assert_eq!(resumed[0], 0);
    assert!(
        resumed[1] > 0,
        "the second attempt started over: {starts:?}"
    );
    // The bytes after the resume continue the count: a 206 from the offset,
    // not the whole blob again.
    assert!(first_done[1] > resumed[1], "{first_done:?} vs {resumed:?}");
    assert!(ext4_listing(&image.ext4)
        .iter()
        .any(|l| l.starts_with("noise = ")));
    assert_tmp_empty(cache.path());
}
