//! Wire types read back whatever way a caller reads JSON: from bytes, from a reader (a file,
//! a socket) or from an already parsed `serde_json::Value`.

mod common;

use serde::Serialize;
use serde::de::DeserializeOwned;
use spacesync_shared::dsse::Digest;
use spacesync_shared::wire::{
    BatchReceipt, IngestBatch, IngestResponse, Receipt, ReceiptItem, SourceHead,
};

/// One behaviour: `value` written as JSON reads back equal by every route.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let from_slice: Result<T, String> = serde_json::from_slice(&bytes).map_err(|e| e.to_string());
    let from_reader: Result<T, String> =
        serde_json::from_reader(bytes.as_slice()).map_err(|e| e.to_string());
    let from_value: Result<T, String> = serde_json::from_slice::<serde_json::Value>(&bytes)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string());
    for (route, got) in [
        ("from_slice", from_slice),
        ("from_reader", from_reader),
        ("from_value", from_value),
    ] {
        assert_eq!(got.as_ref(), Ok(value), "{route}");
    }
}

#[test]
fn wire_types_read_back_by_every_route() {
    let (_, envs) = common::chain(3);
    let hub = common::other_key();
    let receipt = Receipt {
        source: common::source(),
        seq: 3,
        entry_hash: envs[2].payload_hash(),
        log_index: 41,
        received_at: common::instant("2018-11-20T01:00:00.123Z"),
    };
    check(&Digest::of(b"x"));
    check(&Digest::ZERO);
    check(&receipt);
    check(&SourceHead {
        source: common::source(),
        held_through: 3,
        head: envs[2].payload_hash(),
    });
    check(&IngestBatch {
        source: common::source(),
        entries: envs.clone(),
    });
    check(&IngestResponse {
        held_through: 3,
        receipts: vec![receipt.sign(&hub)],
        refused: Vec::new(),
        resend_from: None,
        batch_receipt: None,
    });
    let batch = BatchReceipt {
        source: common::source(),
        entries: vec![ReceiptItem {
            seq: 3,
            entry_hash: envs[2].payload_hash(),
            log_index: 41,
            received_at: common::instant("2018-11-20T01:00:00.123Z"),
        }],
    };
    check(&batch);
    check(&IngestResponse {
        held_through: 3,
        receipts: Vec::new(),
        refused: Vec::new(),
        resend_from: None,
        batch_receipt: Some(batch.sign(&hub)),
    });
    check(&envs[0]);
}

#[test]
fn digests_are_64_lower_case_hex_digits() {
    let cases: &[(&str, bool)] = &[
        (
            "\"0000000000000000000000000000000000000000000000000000000000000000\"",
            true,
        ),
        (
            "\"9f2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3d5\"",
            true,
        ),
        (
            "\"9F2C4B6E1A3D5F7081C2E4A6B8D0F1E3C5A7B9D1F3E5A7C9B1D3F5A7C9E1B3D5\"",
            false,
        ),
        (
            "\"9f2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3\"",
            false,
        ),
        (
            "\"9f2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3d5aa\"",
            false,
        ),
        (
            "\"zz2c4b6e1a3d5f7081c2e4a6b8d0f1e3c5a7b9d1f3e5a7c9b1d3f5a7c9e1b3d5\"",
            false,
        ),
        ("0", false),
    ];
    for (json, ok) in cases {
        let got = serde_json::from_str::<Digest>(json);
        assert_eq!(got.is_ok(), *ok, "{json}: {got:?}");
    }
}
