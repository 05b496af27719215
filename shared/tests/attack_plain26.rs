//! Hostile review (session 26) of three performance changes:
//!
//! 1. `entry::fast::plain` — the direct reader `Entry::from_payload` tries first. Held here,
//!    through the public API only, to: `Entry::from_payload(p) == Entry::from_payload_fully(p)`
//!    for every payload `p` (the direct reader's Err path *is* the full reader, so any
//!    difference is a direct reader accepting what the full one refuses or reads otherwise),
//!    and to never panicking (debug build: overflow checks on).
//! 2. `wire::BatchReceipt::payload` — byte for byte `serde_json::to_vec`.
//!
//! Run: `cargo test -p spacesync-shared --test attack_plain26 -- --nocapture` (each runner
//! prints how many cases it ran and how many payloads were accepted).

use std::cell::Cell;

use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use spacesync_shared::dsse::Digest;
use spacesync_shared::entry::{Entry, SourceId};
use spacesync_shared::record::{MAX_COUNT, Population, Record, SpaceCount, SpaceCounts};
use spacesync_shared::region::{RegionCode, SchoolCode};
use spacesync_shared::wire::{BatchReceipt, ReceiptItem};

// ---- the one property ---------------------------------------------------------------------

/// The public reader and the full reader agree on `p` (Ok with the same entry, or the same
/// error). Returns whether the payload was accepted.
fn agree(p: &[u8]) -> Result<bool, TestCaseError> {
    let fast = Entry::from_payload(p);
    let full = Entry::from_payload_fully(p);
    prop_assert_eq!(
        &fast,
        &full,
        "payload bytes: b\"{}\"",
        p.escape_ascii().to_string()
    );
    Ok(fast.is_ok())
}

/// Runs `cases` cases of `strategy` through `agree`, printing the tally.
fn run<S: Strategy>(name: &str, cases: u32, strategy: S, to_bytes: impl Fn(&S::Value) -> Vec<u8>) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let (ran, ok) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        if agree(&to_bytes(&v))? {
            ok.set(ok.get() + 1);
        }
        Ok(())
    });
    eprintln!(
        "[attack_plain26] {name}: {} cases run (incl. shrinking), {} accepted",
        ran.get(),
        ok.get()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---- pieces of payload text ---------------------------------------------------------------

/// Whitespace and near-whitespace: JSON's four, and what other readers call whitespace.
const WS: [&[u8]; 12] = [
    b"",
    b"",
    b"",
    b"",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\x0b",
    b"\x0c",
    b"\xc2\xa0",     // U+00A0
    b"\xef\xbb\xbf", // BOM
];

fn ws() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        40 => Just(Vec::new()),
        12 => prop::sample::select(&WS[4..8]).prop_map(<[u8]>::to_vec),
        1 => prop::sample::select(&WS[..]).prop_map(<[u8]>::to_vec),
        3 => prop::collection::vec(prop::sample::select(&WS[4..8]), 0..5).prop_map(|v| v.concat()),
    ]
}

fn q(s: &str) -> Vec<u8> {
    format!("\"{s}\"").into_bytes()
}

/// A JSON value with weight for the good one.
fn pick(good: Vec<Vec<u8>>, bad: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        40 => prop::sample::select(good),
        1 => prop::sample::select(bad),
    ]
    .boxed()
}

fn source_value() -> BoxedStrategy<Vec<u8>> {
    let long63: String = std::iter::once('a')
        .chain(std::iter::repeat_n('9', 62))
        .collect();
    let long64: String = std::iter::once('a')
        .chain(std::iter::repeat_n('9', 63))
        .collect();
    prop_oneof![
        20 => pick(
            vec![q("gd-agent"), q("ab"), q("0-"), q("9z"), q(&long63), q("a--"), q("00")],
            vec![
                q("a"),
                q(""),
                q("-a"),
                q("Gd"),
                q(&long64),
                q("gd_agent"),
                b"\"gd\\u002dagent\"".to_vec(),
                "\"ｇd\"".as_bytes().to_vec(),
                b"\"gd\xffagent\"".to_vec(),
                b"gd".to_vec(),
                b"null".to_vec(),
                b"12".to_vec(),
            ],
        ),
        1 => "[a-z0-9][a-z0-9-]{0,64}".prop_map(|s| q(&s)),
    ]
    .boxed()
}

const COUNT_GOOD: [&str; 8] = [
    "0",
    "1",
    "7",
    "10",
    "999999999",
    "1000000000",
    "123456",
    "500",
];
const COUNT_BAD: [&str; 22] = [
    "1000000001",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "00",
    "01",
    "-0",
    "-1",
    "1.0",
    "1.",
    "1e0",
    "1E2",
    "0e0",
    "0.0",
    "-0.0",
    "1000000000.0",
    "null",
    "\"5\"",
    "true",
    "[]",
    "{}",
    "+1",
];

fn count_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        30 => prop::sample::select(&COUNT_GOOD[..]).prop_map(|s| s.as_bytes().to_vec()),
        20 => (0..=MAX_COUNT + 2).prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(&COUNT_BAD[..]).prop_map(|s| s.as_bytes().to_vec()),
    ]
    .boxed()
}

fn seq_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        10 => prop::sample::select(vec!["1", "2", "7", "18446744073709551615", "18446744073709551614"])
            .prop_map(|s| s.as_bytes().to_vec()),
        10 => any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(vec![
            "0", "01", "00", "-0", "-1", "1.0", "1e0", "18446744073709551616",
            "184467440737095516150", "\"1\"", "null", "1 2", "1,", "0x1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
    .boxed()
}

fn prev_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        20 => Just(q(&"0".repeat(64))),
        20 => prop::array::uniform32(any::<u8>()).prop_map(|b| q(&Digest(b).to_string())),
        2 => prop::sample::select(vec![
            q(&"A".repeat(64)),
            q(&format!("0{}", "a".repeat(62))),
            q(&"a".repeat(65)),
            q(&"g".repeat(64)),
            q(&format!("{}F", "f".repeat(63))),
            q(&format!("{}é", "f".repeat(62))),
            format!("\"\\u0030{}\"", "0".repeat(63)).into_bytes(),
            b"null".to_vec(),
            b"0".to_vec(),
        ]),
    ]
    .boxed()
}

/// A date `YYYY-MM-DD` over the whole space chrono reads and around it.
fn date_text() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (0u32..=9999, 0u32..=13, 0u32..=32)
            .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        // Leap days and month ends at the edges of years and centuries.
        3 => (prop::sample::select(vec![0u32, 1, 4, 100, 400, 1900, 2000, 2100, 2400, 9996, 9999]),
              1u32..=12, 28u32..=31)
            .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        2 => prop::sample::select(vec![
            "2018-11-30", "0000-01-01", "9999-12-31", "0000-02-29", "2000-02-29", "1900-02-29",
            "10000-01-01", "-001-01-01", "+2018-11-30", "2018-11-3", "2018-1-301", "2018-11-30T",
            "２018-11-30", "2018\u{2010}11-30", "2018-11-30 ", " 2018-11-30", "99999-1-1",
            "2018- 1-30", "2018-+1-30", "2018--1-30", "201--11-30",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// A time near `YYYY-MM-DDTHH:MM:SS[.f]Z` over the whole space chrono reads and around it.
fn time_text() -> BoxedStrategy<String> {
    let frac = prop_oneof![
        3 => Just(String::new()),
        6 => (1usize..=9, any::<u64>()).prop_map(|(n, v)| {
            let s = format!("{:020}", v);
            format!(".{}", &s[20 - n..])
        }),
        1 => (10usize..=20, any::<u64>()).prop_map(|(n, v)| {
            let s = format!("{:020}{:020}", v, v.rotate_left(7));
            format!(".{}", &s[..n])
        }),
        1 => prop::sample::select(vec![".", ".-1", ".1a", ",5", ".\u{661}", ".999999999", ".000000000", ".0", ".9"])
            .prop_map(String::from),
    ];
    let zone = prop_oneof![
        10 => Just("Z"),
        1 => prop::sample::select(vec!["z", "+00:00", "-00:00", "UTC", " Z", "Z ", "", "+08:00", "ZZ"]),
    ];
    prop_oneof![
        8 => (date_text(), prop::sample::select(vec!["T", "T", "T", "T", "t", " "]),
              0u32..=25, 0u32..=61, 0u32..=61, frac, zone)
            .prop_map(|(d, t, h, m, s, f, z)| format!("{d}{t}{h:02}:{m:02}:{s:02}{f}{z}")),
        2 => (any::<i64>(), any::<u32>(), 0usize..5).prop_map(|(secs, nanos, form)| {
            let secs = secs.rem_euclid(253_402_300_800 + 62_167_219_200) - 62_167_219_200;
            let t = DateTime::<Utc>::from_timestamp(secs, nanos % 2_000_000_000)
                .unwrap_or_default();
            let forms = [
                chrono::SecondsFormat::Secs,
                chrono::SecondsFormat::Millis,
                chrono::SecondsFormat::Micros,
                chrono::SecondsFormat::Nanos,
                chrono::SecondsFormat::AutoSi,
            ];
            t.to_rfc3339_opts(forms[form], true)
        }),
        1 => prop::sample::select(vec![
            "2016-12-31T23:59:60Z", "2016-12-31T23:59:60.999999999Z", "2018-11-02T24:00:00Z",
            "2018-11-02T23:59:59.9999999999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
            "2018-11-02T02:00:00.Z", "2018-11-02T02:00:00.1234567890Z", "2018-11-02T2:00:00Z",
            "2018-11-02T02:00:0Z", "2018-11-02T02:00:00.5", "2018-11-02T02:00Z", "2018-11-02T02:00:00.0000000001Z",
            "2018-11-02T02:00:00+00", "2018-11-02T02:00:00+0000", "2018-11-02T02:00:00.5+00:00",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

fn campaign_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        20 => Just(q("2018-online-learning-space")),
        10 => "\\PC{0,12}".prop_map(|s| {
            // Any printable text, written plainly where it can be (no escapes needed).
            if s.contains(['"', '\\']) { q("x") } else { q(&s) }
        }),
        2 => prop::sample::select(vec![
            q(""),
            q(" "),
            q("\u{7f}"),
            q("\u{feff}"),
            q("\u{fffe}\u{ffff}"),
            q("\u{10ffff}"),
            q("\u{2028}"),
            b"\"\xed\xa0\x80\"".to_vec(),        // a surrogate in UTF-8
            b"\"\xc0\x80\"".to_vec(),            // overlong NUL
            b"\"\xe0\x80\xaf\"".to_vec(),        // overlong '/'
            b"\"\xf4\x90\x80\x80\"".to_vec(),    // beyond U+10FFFF
            b"\"\xf0\x9f\x98\"".to_vec(),        // truncated
            b"\"\x80\"".to_vec(),
            b"\"a\x00b\"".to_vec(),
            b"\"a\x1fb\"".to_vec(),
            b"\"a\tb\"".to_vec(),
            b"\"a\\nb\"".to_vec(),
            b"\"\\u0000\"".to_vec(),
            b"\"\\ud800\"".to_vec(),
            b"null".to_vec(),
            b"1".to_vec(),
            b"{}".to_vec(),
        ]),
    ]
    .boxed()
}

/// `"key":value` pairs in an object, each with whitespace around it, maybe a pair repeated,
/// maybe keys swapped for strangers.
#[derive(Debug, Clone)]
struct Obj {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ws: Vec<Vec<u8>>,
}

impl Obj {
    fn bytes(&self) -> Vec<u8> {
        let mut ws = self.ws.iter().cycle();
        let mut w = || ws.next().cloned().unwrap_or_default();
        let mut out = w();
        out.push(b'{');
        out.extend(w());
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.extend(w());
                out.push(b',');
                out.extend(w());
            }
            out.extend(k);
            out.extend(w());
            out.push(b':');
            out.extend(w());
            out.extend(v);
        }
        out.extend(w());
        out.push(b'}');
        out
    }
}

/// A key and its value, as text, when the pair is there.
type MaybePair = Option<(Vec<u8>, Vec<u8>)>;

/// Whether each field is there (mostly), repeated (rarely), and in which order.
fn object(
    fields: Vec<(&'static str, BoxedStrategy<Vec<u8>>, u32)>,
    strangers: &'static [&'static str],
) -> BoxedStrategy<Obj> {
    let each: Vec<BoxedStrategy<MaybePair>> = fields
        .into_iter()
        .map(|(k, v, present)| {
            let key = prop_oneof![
                300 => Just(q(k)),
                1 => prop::sample::select(strangers).prop_map(|s: &str| s.as_bytes().to_vec()),
                1 => Just(format!("\"\\u{:04x}{}\"", k.as_bytes()[0], &k[1..]).into_bytes()),
            ];
            prop::option::weighted(f64::from(present) / 100.0, (key, v)).boxed()
        })
        .collect();
    (
        each,
        prop::option::weighted(0.05, any::<prop::sample::Index>()),
        any::<prop::sample::Index>(),
        any::<bool>(),
        prop::collection::vec(ws(), 1..20),
    )
        .prop_map(move |(pairs, dups, rot, shuffle, ws)| {
            let mut pairs: Vec<_> = pairs.into_iter().flatten().collect();
            if !pairs.is_empty() {
                if let Some(d) = dups {
                    let p = pairs[d.index(pairs.len())].clone();
                    pairs.push(p);
                }
                if shuffle {
                    let r = rot.index(pairs.len());
                    pairs.rotate_left(r);
                    if pairs.len() > 2 {
                        pairs.swap(0, 2);
                    }
                }
            }
            Obj { pairs, ws }
        })
        .boxed()
}

const KINDS: [&str; 8] = [
    "teacher",
    "student",
    "parent",
    "master_teacher",
    "school",
    "region",
    "class",
    "club",
];

fn counts_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        60 => object(
            KINDS.iter().enumerate().map(|(i, k)| (*k, count_value(), if i < 2 { 80 } else { 30 })).collect(),
            &["\"Teacher\"", "\"teachers\"", "\"\"", "\"teacher \"", "\"te\\u0061cher\"", "\"t\u{e9}acher\""],
        )
        .prop_map(|o| o.bytes()),
        1 => prop::sample::select(vec![b"{}".to_vec(), b"null".to_vec(), b"[]".to_vec(), b"{\"teacher\":1,}".to_vec(), b"{,}".to_vec()]),
    ]
    .boxed()
}

fn population_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        60 => object(
            vec![
                ("teachers", count_value(), 60),
                ("students", count_value(), 60),
                ("schools", count_value(), 60),
            ],
            &["\"teacher\"", "\"Schools\"", "\"x\""],
        )
        .prop_map(|o| o.bytes()),
        1 => prop::sample::select(vec![b"{}".to_vec(), b"null".to_vec(), b"[]".to_vec()]),
    ]
    .boxed()
}

fn record_value() -> BoxedStrategy<Vec<u8>> {
    let kind = pick(
        vec![q("space_count")],
        vec![
            q("milestone"),
            q("Space_count"),
            q("space_count "),
            b"null".to_vec(),
            b"\"space\\u005fcount\"".to_vec(),
        ],
    );
    let region = pick(
        vec![
            q("440106"),
            q("110101"),
            q("440100"),
            q("440000"),
            q("650000"),
        ],
        vec![
            q("990101"),
            q("440190"),
            q("44010a"),
            q("4401060"),
            q("440006"),
            b"440106".to_vec(),
            b"null".to_vec(),
            q(""),
        ],
    );
    let school = pick(
        vec![q("4401060001"), q("0000000000"), q("9999999999")],
        vec![
            q("440106000"),
            q("44010600011"),
            b"4401060001".to_vec(),
            b"null".to_vec(),
            q("440106000a"),
        ],
    );
    let as_of = prop_oneof![
        30 => date_text().prop_map(|s| q(&s)),
        1 => prop::sample::select(vec![b"null".to_vec(), b"20181130".to_vec(), b"\"2018-11-30\\u0000\"".to_vec()]),
    ]
    .boxed();
    prop_oneof![
        60 => object(
            vec![
                ("kind", kind, 97),
                ("region", region, 97),
                ("school", school, 30),
                ("as_of", as_of, 97),
                ("spaces", counts_value(), 97),
                ("real_name", counts_value(), 30),
                ("population", population_value(), 30),
            ],
            &["\"Kind\"", "\"extra\"", "\"spaces \"", "\"\"", "\"kind\\u0000\""],
        )
        .prop_map(|o| o.bytes()),
        1 => prop::sample::select(vec![b"{}".to_vec(), b"null".to_vec(), b"[]".to_vec(), b"\"space_count\"".to_vec()]),
    ]
    .boxed()
}

fn entry_object() -> BoxedStrategy<Obj> {
    object(
        vec![
            ("source", source_value(), 98),
            ("seq", seq_value(), 98),
            ("prev", prev_value(), 98),
            ("recorded_at", prop_oneof![
                40 => time_text().prop_map(|s| q(&s)),
                1 => prop::sample::select(vec![b"null".to_vec(), b"0".to_vec(), b"\"2018-11-02T02:00:00\\u005a\"".to_vec()]),
            ].boxed(), 98),
            ("campaign", campaign_value(), 98),
            ("record", record_value(), 98),
        ],
        &["\"Source\"", "\"extra\"", "\"seq \"", "\"recorded_at\\u0000\"", "\"s\u{e9}q\""],
    )
}

const TRAILING: [&[u8]; 21] = [
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b"",
    b" ",
    b"\n\t\r ",
    b"x",
    b"}",
    b",",
    b"\0",
    b"\xef\xbb\xbf",
    b"{}",
];

fn payload() -> BoxedStrategy<Vec<u8>> {
    (
        prop::sample::select(&[b"" as &[u8], b"", b"", b"", b" ", b"\xef\xbb\xbf", b"\n"][..]),
        entry_object(),
        prop::sample::select(&TRAILING[..]),
    )
        .prop_map(|(lead, o, trail)| [lead, &o.bytes()[..], trail].concat())
        .boxed()
}

// ---- valid entries, as agents write them ------------------------------------------------

fn valid_entry() -> BoxedStrategy<Entry> {
    (
        prop::sample::select(vec!["440106", "110101", "440100", "440000", "650000"]),
        prop::option::of(0u64..=9_999_999_999),
        (0i32..=9999, 1u32..=12, 1u32..=31),
        prop::array::uniform8(prop::option::of(0..=MAX_COUNT)),
        prop::option::of(prop::array::uniform8(prop::option::of(0..=MAX_COUNT))),
        prop::option::of((
            prop::option::of(0..=MAX_COUNT),
            prop::option::of(0..=MAX_COUNT),
            prop::option::of(0..=MAX_COUNT),
        )),
        (
            "[a-z0-9][a-z0-9-]{1,62}",
            1u64..,
            prop::array::uniform32(any::<u8>()),
        ),
        (
            -62_167_219_200i64..253_402_300_799,
            0u32..1_000_000_000,
            "\\PC{0,8}",
        ),
    )
        .prop_filter_map(
            "a valid entry",
            |(
                region,
                school,
                (y, m, d),
                spaces,
                real,
                pop,
                (source, seq, prev),
                (secs, nanos, campaign),
            )| {
                let region = RegionCode::parse(region).ok()?;
                let school = match school {
                    Some(s) if region.level() != spacesync_shared::region::Level::Province => {
                        Some(SchoolCode::parse(&format!("{s:010}")).ok()?)
                    }
                    _ => None,
                };
                let spaces = SpaceCounts(spaces);
                if spaces.is_empty() {
                    return None;
                }
                let real_name = real.map(|r| {
                    let mut out = SpaceCounts::default();
                    for (k, s) in spaces.iter() {
                        out.set(k, r[k.index()].map(|v| v.min(s)));
                    }
                    out
                });
                Some(Entry {
                    source: SourceId::parse(&source).ok()?,
                    seq,
                    prev: Digest(prev),
                    // Agents write milliseconds (`Entry`'s serializer).
                    recorded_at: DateTime::<Utc>::from_timestamp(
                        secs,
                        nanos / 1_000_000 * 1_000_000,
                    )?,
                    campaign,
                    record: Record::SpaceCount(SpaceCount {
                        region,
                        school,
                        as_of: NaiveDate::from_ymd_opt(y, m, d)?,
                        spaces,
                        real_name,
                        population: pop.map(|(teachers, students, schools)| Population {
                            teachers,
                            students,
                            schools,
                        }),
                    }),
                })
            },
        )
        .boxed()
}

/// Bytes that matter to a JSON reader, and any byte.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"0123456789\"\\{}[],: \t\n\r\x0b\x0c\x00\x1f\x7f\x80\xbf\xc0\xc2\xe0\xed\xef\xf0\xf4\xf5\xffTZz.-+eE".to_vec()),
        1 => any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Replace(prop::sample::Index, u8),
    /// Copies a span of the payload to another place.
    Splice(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
    ),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<prop::sample::Index>().prop_map(Edit::Delete),
        3 => (any::<prop::sample::Index>(), edit_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        3 => (any::<prop::sample::Index>(), edit_byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b, c)| Edit::Splice(a, b, c)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut p: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if p.is_empty() {
            break;
        }
        match e {
            Edit::Delete(i) => {
                p.remove(i.index(p.len()));
            }
            Edit::Insert(i, b) => p.insert(i.index(p.len() + 1), *b),
            Edit::Replace(i, b) => {
                let i = i.index(p.len());
                p[i] = *b;
            }
            Edit::Splice(a, b, c) => {
                let (mut x, mut y) = (a.index(p.len()), b.index(p.len()));
                if x > y {
                    std::mem::swap(&mut x, &mut y);
                }
                let span = p[x..y.min(x + 40)].to_vec();
                let at = c.index(p.len() + 1);
                p.splice(at..at, span);
            }
            Edit::Truncate(i) => p.truncate(i.index(p.len())),
        }
    }
    p
}

// ---- (1) the direct reader --------------------------------------------------------------

#[test]
fn generated_payloads_read_alike() {
    run("generated payloads", 30_000, payload(), Clone::clone);
}

#[test]
fn agents_payloads_with_byte_edits_read_alike() {
    run(
        "agents' payloads, 1-3 byte edits",
        30_000,
        (valid_entry(), prop::collection::vec(edit(), 1..4)),
        |(e, edits)| apply(e.to_payload(), edits),
    );
}

#[test]
fn generated_payloads_with_byte_edits_read_alike() {
    run(
        "generated payloads, 1-2 byte edits",
        15_000,
        (payload(), prop::collection::vec(edit(), 1..3)),
        |(p, edits)| apply(p.clone(), edits),
    );
}

#[test]
fn agents_payloads_read_alike_and_are_taken() {
    run("agents' payloads as written", 5_000, valid_entry(), |e| {
        let p = e.to_payload();
        assert_eq!(
            Entry::from_payload(&p).as_ref(),
            Ok(e),
            "b\"{}\"",
            p.escape_ascii()
        );
        p
    });
}

/// Times and dates alone, over their whole space: the rest of the payload fixed and plain.
#[test]
fn times_and_dates_read_alike() {
    let base = plain_base();
    let time_at = base.find("2018-12-01T00:00:00.123Z").unwrap();
    let date_at = base.find("2018-11-30").unwrap();
    run("recorded_at over its space", 20_000, time_text(), |t| {
        format!("{}{}{}", &base[..time_at], t, &base[time_at + 24..]).into_bytes()
    });
    run("as_of over its space", 10_000, date_text(), |d| {
        format!("{}{}{}", &base[..date_at], d, &base[date_at + 10..]).into_bytes()
    });
}

#[test]
fn arbitrary_bytes_neither_panic_nor_differ() {
    run(
        "arbitrary bytes",
        20_000,
        prop::collection::vec(any::<u8>(), 0..300),
        Clone::clone,
    );
    run(
        "JSON-ish token soup",
        20_000,
        prop::collection::vec(
            prop::sample::select(vec![
                "{",
                "}",
                "\"source\"",
                "\"seq\"",
                "\"prev\"",
                "\"recorded_at\"",
                "\"campaign\"",
                "\"record\"",
                "\"kind\"",
                "\"space_count\"",
                "\"region\"",
                "\"440106\"",
                "\"as_of\"",
                "\"2018-11-30\"",
                "\"spaces\"",
                "\"teacher\"",
                ":",
                ",",
                "1",
                "0",
                " ",
                "\"ab\"",
                "\"2018-12-01T00:00:00Z\"",
                "\"0000000000000000000000000000000000000000000000000000000000000000\"",
                "\"population\"",
                "\"teachers\"",
                "\"real_name\"",
                "\"school\"",
                "\"4401060001\"",
            ]),
            0..60,
        ),
        |toks| toks.concat().into_bytes(),
    );
}

/// A plain agent payload, as text.
fn plain_base() -> String {
    let e = Entry {
        source: SourceId::parse("gd-agent").unwrap(),
        seq: 7,
        prev: Digest([7; 32]),
        recorded_at: Utc.timestamp_millis_opt(1_543_622_400_123).unwrap(),
        campaign: "2018-online-learning-space".into(),
        record: Record::SpaceCount(SpaceCount {
            region: RegionCode::parse("440106").unwrap(),
            school: Some(SchoolCode::parse("4401060001").unwrap()),
            as_of: NaiveDate::from_ymd_opt(2018, 11, 30).unwrap(),
            spaces: SpaceCounts([Some(10), Some(20), None, None, None, None, None, Some(3)]),
            real_name: Some(SpaceCounts([
                Some(5),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            ])),
            population: Some(Population {
                teachers: Some(40),
                students: None,
                schools: Some(1),
            }),
        }),
    };
    String::from_utf8(e.to_payload()).unwrap()
}

/// Every prefix of a plain payload, and each single byte of it replaced by each of 256.
#[test]
fn every_truncation_and_every_single_byte_of_a_plain_payload() {
    let base = plain_base().into_bytes();
    let (mut n, mut ok) = (0, 0);
    for end in 0..=base.len() {
        n += 1;
        ok += usize::from(agree(&base[..end]).unwrap());
    }
    for i in 0..base.len() {
        for b in 0..=255u8 {
            let mut p = base.clone();
            p[i] = b;
            n += 1;
            ok += usize::from(agree(&p).unwrap());
            // And the byte inserted before position i.
            let mut p = base.clone();
            p.insert(i, b);
            n += 1;
            ok += usize::from(agree(&p).unwrap());
        }
    }
    eprintln!("[attack_plain26] exhaustive single-byte edits: {n} cases, {ok} accepted");
}

/// Hand-picked inputs at the edges the brief names.
#[test]
fn targeted_payloads() {
    let base = plain_base();
    let r = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replacen(from, to, 1)
    };
    let zeros = "0".repeat(64);
    let mut cases: Vec<Vec<u8>> = vec![
        base.clone().into_bytes(),
        // seq at u64's edge and past it.
        r("\"seq\":7", "\"seq\":18446744073709551615").into_bytes(),
        r("\"seq\":7", "\"seq\":18446744073709551616").into_bytes(),
        r("\"seq\":7", "\"seq\":0").into_bytes(),
        r("\"seq\":7", "\"seq\":-0").into_bytes(),
        r("\"seq\":7", "\"seq\":7.0").into_bytes(),
        r("\"seq\":7", "\"seq\":07").into_bytes(),
        // Counts at MAX_COUNT.
        r("\"teacher\":10", "\"teacher\":1000000000").into_bytes(),
        r("\"teacher\":10", "\"teacher\":1000000001").into_bytes(),
        r("\"teacher\":5", "\"teacher\":10").into_bytes(),
        r("\"teacher\":5", "\"teacher\":11").into_bytes(),
        r("\"teacher\":5", "\"student\":5").into_bytes(),
        r("\"teacher\":5", "\"parent\":0").into_bytes(),
        r("\"teachers\":40", "\"teachers\":1000000000").into_bytes(),
        r("\"teachers\":40", "\"teachers\":1000000001").into_bytes(),
        // Empty objects.
        r("\"real_name\":{\"teacher\":5}", "\"real_name\":{}").into_bytes(),
        r("\"real_name\":{\"teacher\":5}", "\"real_name\":{ }").into_bytes(),
        r(
            "\"population\":{\"teachers\":40,\"schools\":1}",
            "\"population\":{}",
        )
        .into_bytes(),
        r(
            "\"spaces\":{\"teacher\":10,\"student\":20,\"club\":3}",
            "\"spaces\":{}",
        )
        .into_bytes(),
        // Nulls where the full reader reads "absent".
        r("\"school\":\"4401060001\"", "\"school\":null").into_bytes(),
        r("\"teachers\":40", "\"teachers\":null").into_bytes(),
        r("\"teacher\":5", "\"teacher\":null").into_bytes(),
        // Province with and without a school.
        r("\"region\":\"440106\"", "\"region\":\"440000\"").into_bytes(),
        r(
            "\"region\":\"440106\",\"school\":\"4401060001\"",
            "\"region\":\"440000\"",
        )
        .into_bytes(),
        // Dates.
        r("2018-11-30", "0000-01-01").into_bytes(),
        r("2018-11-30", "0000-02-29").into_bytes(),
        r("2018-11-30", "9999-12-31").into_bytes(),
        r("2018-11-30", "2100-02-29").into_bytes(),
        r("2018-11-30", "2000-02-29").into_bytes(),
        // Times.
        r("2018-12-01T00:00:00.123Z", "0000-01-01T00:00:00Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "0000-01-01T00:00:00.000000001Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "9999-12-31T23:59:59.999999999Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2016-12-31T23:59:60Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2016-12-31T23:59:60.5Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2020-02-29T12:00:00Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2019-02-29T12:00:00Z").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2018-12-01T24:00:00Z").into_bytes(),
        r(
            "2018-12-01T00:00:00.123Z",
            "2018-12-01T00:00:00.1234567891Z",
        )
        .into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2018-12-01T00:00:00+00:00").into_bytes(),
        r("2018-12-01T00:00:00.123Z", "2018-12-01t00:00:00z").into_bytes(),
        // Digests.
        r(&Digest([7; 32]).to_string(), &zeros).into_bytes(),
        r(&Digest([7; 32]).to_string(), &"0A".repeat(32)).into_bytes(),
        r(&Digest([7; 32]).to_string(), &"AB".repeat(32)).into_bytes(),
        r(&Digest([7; 32]).to_string(), &"ab".repeat(32)).into_bytes(),
        // Sources at their limits.
        r("gd-agent", &format!("a{}", "-".repeat(62))).into_bytes(),
        r("gd-agent", &format!("a{}", "-".repeat(63))).into_bytes(),
        r("gd-agent", "0-").into_bytes(),
        r("gd-agent", "-0").into_bytes(),
        // Campaigns.
        r("2018-online-learning-space", "").into_bytes(),
        r("2018-online-learning-space", "\u{feff}\u{7f}\u{10ffff}").into_bytes(),
        // Keys that decode alike.
        r("\"seq\":7", "\"seq\":7,\"s\\u0065q\":7").into_bytes(),
        r(
            "\"kind\":\"space_count\"",
            "\"kind\":\"space_count\",\"\\u006bind\":\"space_count\"",
        )
        .into_bytes(),
        r("\"teacher\":10", "\"teacher\":10,\"te\\u0061cher\":10").into_bytes(),
        // Trailing bytes.
        format!("{base} \n\t\r").into_bytes(),
        format!("{base}\u{feff}").into_bytes(),
        format!("{base}\0").into_bytes(),
        format!("{base}{base}").into_bytes(),
        format!("\u{feff}{base}").into_bytes(),
        format!(" \n\t\r{base}").into_bytes(),
        // Non-JSON whitespace inside.
        r("\"seq\":7", "\"seq\":\x0c7").into_bytes(),
        r("\"seq\":7", "\"seq\":\u{a0}7").into_bytes(),
        // Deep nesting and very large input.
        format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        r(
            "\"campaign\":\"2018-online-learning-space\"",
            &format!("\"campaign\":\"{}\"", "x".repeat(5_000_000)),
        )
        .into_bytes(),
        r("\"seq\":7", &format!("\"seq\":{}7", " ".repeat(1_000_000))).into_bytes(),
        r("\"seq\":7", &format!("\"seq\":{}", "9".repeat(100_000))).into_bytes(),
    ];
    // Invalid UTF-8 inside each string.
    for (at, _) in base.match_indices('"').step_by(2) {
        for bad in [
            &b"\xc0\x80"[..],
            b"\xed\xa0\x80",
            b"\xff",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82",
        ] {
            let mut p = base.clone().into_bytes();
            p.splice(at + 1..at + 1, bad.iter().copied());
            cases.push(p);
        }
    }
    let mut ok = 0;
    for p in &cases {
        ok += usize::from(agree(p).unwrap());
    }
    eprintln!(
        "[attack_plain26] targeted: {} cases, {ok} accepted",
        cases.len()
    );
}

// ---- (2) the batch receipt's payload ----------------------------------------------------

fn receipt_time() -> BoxedStrategy<DateTime<Utc>> {
    prop_oneof![
        3 => (any::<i64>(), any::<u32>()).prop_map(|(s, n)| {
            let s = s.rem_euclid(DateTime::<Utc>::MAX_UTC.timestamp() - DateTime::<Utc>::MIN_UTC.timestamp())
                + DateTime::<Utc>::MIN_UTC.timestamp();
            DateTime::<Utc>::from_timestamp(s, n % 2_000_000_000).unwrap_or_default()
        }),
        2 => (-62_167_219_200i64..253_402_300_800, 0u32..1_000_000_000)
            .prop_map(|(s, n)| DateTime::<Utc>::from_timestamp(s, n).unwrap_or_default()),
        // Leap seconds (nanoseconds ≥ 10^9 on a :59 second).
        1 => (0i64..10_000_000, 1_000_000_000u32..2_000_000_000)
            .prop_map(|(d, n)| DateTime::<Utc>::from_timestamp(d * 86_400 + 86_399, n).unwrap_or_default()),
        1 => prop::sample::select(vec![
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::UNIX_EPOCH,
            DateTime::<Utc>::from_timestamp(-1, 999_999_999).unwrap(),
            DateTime::<Utc>::from_timestamp(253_402_300_799, 999_999_999).unwrap(),
            DateTime::<Utc>::from_timestamp(253_402_300_800, 0).unwrap(),
            DateTime::<Utc>::from_timestamp(-62_167_219_201, 1).unwrap(),
            DateTime::<Utc>::from_timestamp(86_399, 1_999_999_999).unwrap(),
        ]),
    ]
    .boxed()
}

fn receipt_item(times: Vec<DateTime<Utc>>) -> BoxedStrategy<ReceiptItem> {
    (
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            any::<u64>()
        ],
        prop::array::uniform32(any::<u8>()),
        prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        prop::sample::select(times),
    )
        .prop_map(|(seq, h, log_index, received_at)| ReceiptItem {
            seq,
            entry_hash: Digest(h),
            log_index,
            received_at,
        })
        .boxed()
}

#[test]
fn batch_receipt_payload_is_serde_json_byte_for_byte() {
    let long63: String = std::iter::once('z')
        .chain(std::iter::repeat_n('-', 62))
        .collect();
    let strategy = (
        prop_oneof![
            Just("ab".to_string()),
            Just("0-".to_string()),
            Just(long63),
            "[a-z0-9][a-z0-9-]{1,62}"
        ],
        prop::collection::vec(receipt_time(), 1..4),
    )
        .prop_flat_map(|(source, times)| {
            (
                Just(source),
                prop::collection::vec(receipt_item(times), 0..60),
            )
        });
    let mut runner = TestRunner::new(Config {
        cases: 5_000,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = Cell::new(0u32);
    runner
        .run(&strategy, |(source, entries)| {
            ran.set(ran.get() + 1);
            let b = BatchReceipt {
                source: SourceId::parse(&source).unwrap(),
                entries,
            };
            let want = serde_json::to_vec(&b).unwrap();
            let got = b.payload();
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
            Ok(())
        })
        .unwrap();
    eprintln!("[attack_plain26] batch receipts: {} cases", ran.get());

    // Many entries, alternating times (the cache holds one), equal instants, leap seconds.
    let t1 = DateTime::<Utc>::from_timestamp(86_399, 1_500_000_000).unwrap();
    let t2 = DateTime::<Utc>::from_timestamp(86_399, 500_000_000).unwrap();
    let t3 = DateTime::<Utc>::MAX_UTC;
    let entries: Vec<ReceiptItem> = (0..20_000u64)
        .map(|i| ReceiptItem {
            seq: u64::MAX - i,
            entry_hash: Digest([i as u8; 32]),
            log_index: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            received_at: [t1, t2, t3, DateTime::<Utc>::MIN_UTC][(i % 4) as usize],
        })
        .collect();
    let b = BatchReceipt {
        source: SourceId::parse("a0").unwrap(),
        entries,
    };
    assert!(b.payload() == serde_json::to_vec(&b).unwrap());
    let empty = BatchReceipt {
        source: SourceId::parse("a0").unwrap(),
        entries: vec![],
    };
    assert_eq!(empty.payload(), serde_json::to_vec(&empty).unwrap());
}
