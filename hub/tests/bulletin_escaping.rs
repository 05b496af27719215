//! Names and reasons in a bulletin's HTML cannot become markup. Unit names (Chinese and
//! English, in the ranking, the lagging list, plan problems, flag counts, extensions, the
//! notice log), milestone titles, titles of the bulletin, extension reasons, nominees of a
//! quota violation, notice texts, rules and states (addressees are region codes, drawn by
//! the unit names above), and the checkpoint's note
//! and root are drawn as text wherever they appear, whatever characters they hold. Source
//! ids cannot hold any of these characters (their grammar is `[a-z0-9-]`), and plan
//! problems are numbers; both are drawn through the same template.
//!
//! The property: a bulletin drawn with hostile strings equals the same bulletin drawn with
//! inert placeholders, each placeholder replaced by its string with `&`, `<`, `>` and `"`
//! turned into entities. So every occurrence is escaped and nothing else on the page
//! changes. The single quote `'` is left as it is (as maud leaves it): every attribute is
//! double-quoted (checked below), so `'` can end neither an attribute nor a tag.

use chrono::{NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use spacesync_hub::assessment::{Bulletin, BulletinNotice, NoticeEntry, QuotaViolationItem};
use spacesync_hub::render::{self, Format, Lang, Rendering};
use spacesync_hub::views::{Extension, Flag};
use spacesync_shared::SourceId;
use spacesync_shared::campaign::NomineeType;
use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::Level;

/// The expected text of `s` in HTML, written independently of the template library.
fn expected(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The `i`-th inert placeholder: no character of it needs escaping, and no bulletin or
/// hostile string contains it otherwise.
fn placeholder(i: usize) -> String {
    format!("\u{2603}{i}\u{2603}")
}

/// The scripted 2018 campaign's second bulletin (lagging units, plan problems, a silent
/// source, history), with every name and reason replaced by `n(0)`, `n(1)`, … and a flag,
/// an extension, a quota violation and two notices added.
fn bulletin(n: &dyn Fn(usize) -> String) -> Bulletin {
    let doc: Value =
        serde_json::from_str(include_str!("../testdata/bulletin-2018-2.json")).expect("json");
    let mut b = Bulletin::from_document(&doc).expect("bulletin");
    b.title = n(0);
    b.title_en = n(1);
    b.checkpoint.note = n(2);
    b.checkpoint.root = n(3);
    b.checkpoint.origin = n(4);
    let a = &mut b.assessment;
    for (i, p) in a.provinces.iter_mut().enumerate() {
        p.name = Some(n(10 + 2 * i));
        p.name_en = Some(n(11 + 2 * i));
    }
    for l in &mut a.lagging {
        let unit = a
            .provinces
            .iter()
            .position(|p| p.code == l.code)
            .unwrap_or(0);
        l.name = Some(n(10 + 2 * unit));
        l.name_en = Some(n(11 + 2 * unit));
    }
    for p in &mut a.plan_problems {
        p.name = Some(n(80));
    }
    for (i, d) in a.deliverables.iter_mut().enumerate() {
        d.title = n(90 + 2 * i);
        d.title_en = n(91 + 2 * i);
    }
    for (i, w) in a.windows.iter_mut().enumerate() {
        w.title = n(110 + 2 * i);
        w.title_en = n(111 + 2 * i);
    }
    let on = |d: u32| NaiveDate::from_ymd_opt(2018, 11, d).expect("date");
    let milestone = a
        .deliverables
        .first()
        .map(|d| d.id.clone())
        .unwrap_or_default();
    a.extensions.push(Extension {
        seq: 9,
        region: "440000".parse().expect("code"),
        milestone,
        until: on(30),
        reason: n(130),
        granted_at: Utc.with_ymd_and_hms(2018, 11, 20, 1, 0, 0).unwrap(),
    });
    a.quota_violations.push(QuotaViolationItem {
        province: "440000".parse().expect("code"),
        level: Level::City,
        by: "440100".parse().expect("code"),
        nominee_type: NomineeType::School,
        nominee: n(131),
        limit: 1,
        counted: vec![n(132)],
        source: SourceId::parse("gd-a").expect("id"),
        seq: 3,
        text: n(133),
    });
    a.flags.push(Flag::Decrease {
        region: "440106".parse().expect("code"),
        school: None,
        kind: SpaceKind::Teacher,
        before: (on(1), 10),
        after: (on(5), 5),
        source: SourceId::parse("gd-a").expect("id"),
    });
    // Addressees are region codes, drawn by the names above.
    b.notices = vec![
        NoticeEntry::Notice(Box::new(BulletinNotice {
            id: 1,
            rule: n(140),
            addressee: Some("110000".parse().expect("code")),
            state: n(142),
            text: n(143),
            text_en: n(143),
            created: Some(Utc.with_ymd_and_hms(2018, 11, 20, 1, 0, 0).unwrap()),
            ..BulletinNotice::default()
        })),
        NoticeEntry::Notice(Box::new(BulletinNotice {
            id: 2,
            rule: "behind_pace".into(),
            addressee: Some("440000".parse().expect("code")),
            state: "pending".into(),
            text: n(144),
            text_en: n(144),
            ..BulletinNotice::default()
        })),
    ];
    b
}

/// A string with at least one character HTML gives a meaning to.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            "[a-z区 ]{0,4}",
            prop::sample::select(vec!['<', '>', '&', '"', '\'']),
            "[a-z<>&\"'区/=; ]{0,8}",
        )
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        prop::sample::select(vec![
            "<script>alert('x')</script>".to_string(),
            "\"><img src=x onerror=alert(1)>".to_string(),
            "' onmouseover='alert(1)".to_string(),
            "</title><script>x()</script>".to_string(),
            "&amp;&lt;&#39;".to_string(),
            "]]></svg><script>".to_string(),
        ]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn names_and_reasons_are_escaped_everywhere_in_the_bulletin(
        strings in prop::collection::vec(hostile(), 150),
        english in any::<bool>(),
    ) {
        let lang = if english { Lang::En } else { Lang::Zh };
        let s = |i: usize| strings[i].clone();
        let neutral = render::html(&bulletin(&placeholder), lang);
        let hostile = render::html(&bulletin(&s), lang);
        // The check is not vacuous: titles, unit names, milestone titles, the reason,
        // the nominee and the notice texts are on the page.
        let shown = [if english { 1 } else { 0 }, if english { 11 } else { 10 }, 130, 131, 143, 144];
        for i in shown {
            prop_assert!(neutral.contains(&placeholder(i)), "placeholder {} is not shown", i);
        }
        let mut want = neutral.clone();
        for (i, x) in strings.iter().enumerate() {
            want = want.replace(&placeholder(i), &expected(x));
        }
        prop_assert!(hostile == want, "{:?}: a name changed the page beyond its escaped text", lang);
        prop_assert!(!neutral.contains("='"), "a single-quoted attribute, where ' would end it");
        prop_assert!(!hostile.contains("<script"), "a raw <script");
        prop_assert!(!hostile.contains("<img"), "a raw <img");
    }
}

/// A document that does not read as a bulletin is refused in words, and the reader's
/// error (which quotes the offending value) is escaped too.
#[test]
fn an_unreadable_document_is_explained_and_escaped() {
    let doc = json!({ "number": "<script>alert('x')</script>" });
    for lang in [Lang::Zh, Lang::En] {
        let html = Format::Rendered(Rendering::Html);
        let page = spacesync_hub::bulletin::show(&doc, html, lang).expect("a page");
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("id=\"unreadable\""), "{page}");
    }
}
