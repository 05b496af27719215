//! Attacks on the agent's receipt handling by a hostile or buggy hub: answers signed with
//! the real hub key that still cannot be true. A source's entries are logged in seq order
//! into an append-only log, so a later seq always sits at a higher leaf index: a receipt
//! answer that puts two entries at one leaf, a later seq below an earlier one, or one seq
//! at two leaves contradicts itself, and nothing it covers may count as delivered.

use spacesync_shared::wire::{BatchReceipt, IngestResponse, ReceiptItem};

use super::*;

/// 200 with a batch receipt whose items `alter` changed before the hub signed.
fn signed_batch(
    alter: impl Fn(&mut ReceiptItem) + Send + 'static,
) -> impl FnOnce(&Request) -> Result<Answer, Unreached> + Send {
    batch_receipted(move |req| batch_receipt(req, &hub_key(), |_| true, alter))
}

/// Nothing of the batch counts as delivered and nothing was stored for it.
fn nothing_delivered(r: &Rig, seqs: std::ops::RangeInclusive<u64>, acked: u64) {
    assert_eq!(r.acked(), acked);
    for seq in seqs {
        assert!(
            !r.store.has_receipt(seq).unwrap_or(true),
            "seq {seq} has a stored receipt"
        );
    }
}

#[tokio::test]
async fn a_batch_receipt_putting_every_entry_at_one_leaf_delivers_nothing() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(signed_batch(|i| i.log_index = 7));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt", "{reason}");
    assert!(reason.contains("leaf"), "{reason}");
    nothing_delivered(&r, 1..=3, 0);
    assert_eq!(r.store.batch_receipt_count(), 0);
}

#[tokio::test]
async fn a_batch_receipt_whose_leaf_indexes_fall_as_seqs_rise_delivers_nothing() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(signed_batch(|i| i.log_index = 100 - i.seq));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt", "{reason}");
    nothing_delivered(&r, 1..=3, 0);
}

#[tokio::test]
async fn per_entry_receipts_putting_two_entries_at_one_leaf_deliver_nothing() {
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(|req| {
        let receipts = receipts(req, 3, &hub_key())
            .iter()
            .filter_map(|env| Receipt::open(env, &hub_key().verifying_key()).ok())
            .map(|mut rc| {
                rc.log_index = 40;
                rc.sign(&hub_key())
            })
            .collect();
        let r = IngestResponse {
            held_through: 3,
            receipts,
            ..Default::default()
        };
        Ok(ingest_answer(200, &r))
    });
    let (code, _) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt");
    nothing_delivered(&r, 1..=3, 0);
}

#[tokio::test]
async fn one_answer_naming_two_leaves_for_one_seq_delivers_nothing() {
    // Both forms in one answer, each valid alone, disagreeing about where seq 2 is.
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(|req| {
        let batch = batch_receipt(req, &hub_key(), |_| true, |_| {});
        let own = receipts(req, 3, &hub_key())
            .iter()
            .filter_map(|env| Receipt::open(env, &hub_key().verifying_key()).ok())
            .filter(|rc| rc.seq == 2)
            .map(|mut rc| {
                rc.log_index = 2_000;
                rc.sign(&hub_key())
            })
            .collect();
        let r = IngestResponse {
            held_through: 3,
            receipts: own,
            batch_receipt: Some(batch),
            ..Default::default()
        };
        Ok(ingest_answer(200, &r))
    });
    let (code, _) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt");
    nothing_delivered(&r, 1..=3, 0);
}

#[tokio::test]
async fn a_later_batch_receipted_below_an_earlier_one_delivers_nothing() {
    // Seqs 1–3 at leaves 1–3 (the rig's hub puts seq n at leaf n); then seqs 4–5 at
    // leaves 0 and 1: below seq 3's leaf, which the log cannot have done.
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.acked(), 3);
    r.append(2);
    r.hub.then(signed_batch(|i| i.log_index = i.seq - 4));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt", "{reason}");
    nothing_delivered(&r, 4..=5, 3);
}

#[tokio::test]
async fn honest_receipts_with_gaps_between_leaves_still_deliver() {
    // Other sources' entries lie between this source's: indexes rise with gaps; a resent
    // entry keeps its first leaf. All of this is what an honest hub sends.
    let mut r = rig(3, true);
    r.hub.then(r.head(0));
    r.hub.then(signed_batch(|i| i.log_index = i.seq * 1_000));
    assert!(r.deliver().await.is_ok());
    r.append(3);
    r.hub
        .then(signed_batch(|i| i.log_index = i.seq * 1_000 + 17));
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.acked(), 6);
    assert_eq!(r.verify(), Vec::<String>::new());
}

#[test]
fn batch_receipt_open_refuses_leaf_indexes_that_do_not_rise_with_seqs() {
    let hub = hub_key();
    let item = |seq, log_index| ReceiptItem {
        seq,
        entry_hash: spacesync_shared::Digest::of(&[seq as u8]),
        log_index,
        received_at: chrono::DateTime::UNIX_EPOCH,
    };
    let source = identity().source.clone();
    let open = |entries| {
        BatchReceipt::open(
            &BatchReceipt {
                source: source.clone(),
                entries,
            }
            .sign(&hub),
            &hub.verifying_key(),
        )
    };
    assert!(open(vec![item(1, 5), item(2, 9), item(3, 10)]).is_ok());
    assert!(
        open(vec![item(1, 5), item(2, 5)]).is_err(),
        "one leaf, two seqs"
    );
    assert!(open(vec![item(1, 5), item(2, 4)]).is_err(), "falling");
}

#[tokio::test]
async fn a_batch_receipt_shifted_by_one_seq_is_a_fork_and_delivers_nothing() {
    // Seqs 2–4 carrying the hashes of entries 1–3: every part is hub-signed, none true.
    let mut r = rig(4, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        let env = batch_receipt(req, &hub_key(), |s| s <= 3, |_| {});
        let mut b: BatchReceipt = serde_json::from_slice(&env.payload).unwrap_or_else(|e| {
            panic!("{e}");
        });
        for i in &mut b.entries {
            i.seq += 1;
            i.log_index += 1;
        }
        b.sign(&hub_key())
    }));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "fork", "{reason}");
    nothing_delivered(&r, 1..=4, 0);
    assert_eq!(r.store.batch_receipt_count(), 0);
}

#[tokio::test]
async fn a_batch_receipt_for_another_source_is_an_alarm_and_delivers_nothing() {
    let mut r = rig(2, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        let env = batch_receipt(req, &hub_key(), |_| true, |_| {});
        let mut b: BatchReceipt = serde_json::from_slice(&env.payload).unwrap_or_else(|e| {
            panic!("{e}");
        });
        b.source = spacesync_shared::SourceId::parse("gd-other").unwrap_or_else(|e| panic!("{e}"));
        b.sign(&hub_key())
    }));
    let (code, reason) = alarm(r.deliver().await);
    assert_eq!(code, "bad_receipt");
    assert!(reason.contains("gd-other"), "{reason}");
    nothing_delivered(&r, 1..=2, 0);
}

#[tokio::test]
async fn a_batch_receipt_covering_only_seqs_outside_the_batch_delivers_nothing() {
    // The hub receipts seqs the agent has not sent (and holds only through seq 2 here):
    // they are ignored, and the batch counts as not receipted.
    let mut r = rig(2, true);
    r.hub.then(r.head(0));
    r.hub.then(batch_receipted(|req| {
        let env = batch_receipt(req, &hub_key(), |_| true, |_| {});
        let mut b: BatchReceipt = serde_json::from_slice(&env.payload).unwrap_or_else(|e| {
            panic!("{e}");
        });
        for i in &mut b.entries {
            i.seq += 10;
            i.log_index += 10;
        }
        b.sign(&hub_key())
    }));
    let (error, _, doubt) = transient(r.deliver().await);
    assert!(error.contains("receipts only through seq 0"), "{error}");
    assert!(doubt);
    nothing_delivered(&r, 1..=2, 0);
    assert_eq!(r.store.batch_receipt_count(), 0);
}

#[tokio::test]
async fn a_damaged_stored_receipt_before_the_batch_does_not_stop_delivery() {
    // The receipt of seq 2 points at a batch receipt that is not there: `verify` names
    // it; the pusher still delivers seqs 3–4.
    let mut r = rig(2, true);
    r.hub.then(r.head(0));
    r.hub.then(receipted());
    assert!(r.deliver().await.is_ok());
    r.store
        .debug_put_raw_receipt(2, &[1, 0, 0, 0, 0, 0, 0, 0, 99])
        .unwrap_or_else(|e| panic!("{e}"));
    r.append(2);
    r.hub.then(signed_batch(|i| i.log_index += 10));
    assert!(r.deliver().await.is_ok());
    assert_eq!(r.acked(), 4);
    assert!(
        r.verify().iter().any(|p| p.contains("seq 2")),
        "{:?}",
        r.verify()
    );
}

/// A hub (or whatever answers at its address) that sends an answer without end: the agent
/// stops reading at its bound and treats the exchange as failed, with doubt.
#[tokio::test]
async fn an_answer_without_end_is_not_read_into_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::transport::{HubClient, MAX_ANSWER_BYTES};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let server = tokio::spawn(async move {
        for length in [None, Some(u64::MAX / 2)] {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = match length {
                // Chunked: no length announced, the body just does not end.
                None => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
                Some(n) => format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n"),
            };
            if sock.write_all(head.as_bytes()).await.is_err() {
                continue;
            }
            let piece = vec![b'a'; 1 << 16];
            let chunk = [
                format!("{:x}\r\n", piece.len()).into_bytes(),
                piece.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            let mut sent = 0usize;
            while sent < 2 * MAX_ANSWER_BYTES {
                let out = if length.is_none() { &chunk } else { &piece };
                if sock.write_all(out).await.is_err() {
                    break;
                }
                sent += piece.len();
            }
        }
    });
    let ident = identity();
    let cfg = Arc::new(Config::new(
        ident.source.clone(),
        ident.scope,
        format!("http://127.0.0.1:{port}"),
    ));
    let mut client = HubClient::new(cfg, ident, clock()).unwrap_or_else(|e| panic!("{e}"));
    for what in ["chunked", "announced"] {
        match client.send(&Request::HubKey).await {
            Err(Unreached { error, doubt }) => {
                assert!(error.contains("larger than"), "{what}: {error}");
                assert!(doubt, "{what}");
            }
            Ok(a) => panic!("{what}: read an answer of {} bytes", a.body.len()),
        }
    }
    server.abort();
}
