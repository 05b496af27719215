//! Bulletins for people: HTML (printable, inline charts), Markdown and CSV, in Chinese by
//! default or English. Renders from the bulletin JSON alone, so the same figures appear
//! in every format and language.

use std::fmt::Write as _;

use serde_json::Value;
use spacesync_shared::record::SpaceKind;

use crate::wording::t;
pub use crate::wording::{Lang, count, date, group};

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("—".into(), |r| format!("{:.1}%", r * 100.0))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn name(lang: Lang, p: &Value) -> String {
    match lang {
        Lang::Zh => p["name"].as_str().unwrap_or("").to_string(),
        Lang::En => p["name_en"].as_str().unwrap_or("").to_string(),
    }
}

fn status_word(lang: Lang, s: &str) -> &'static str {
    match s {
        "not_due" => t(lang, "未到期", "not due"),
        "due_soon" => t(lang, "即将到期", "due soon"),
        "on_time" => t(lang, "按时", "on time"),
        "late" => t(lang, "逾期提交", "late"),
        "missing" => t(lang, "未提交", "missing"),
        _ => "?",
    }
}

/// A milestone's title, from the bulletin's own list of deliverables and windows.
fn milestone_title(lang: Lang, b: &Value, id: &str) -> String {
    b["deliverables"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(b["windows"].as_array().into_iter().flatten())
        .find(|d| d["id"].as_str() == Some(id))
        .and_then(|d| d[t(lang, "title", "title_en")].as_str())
        .unwrap_or(id)
        .to_string()
}

fn cell_text(lang: Lang, cell: &Value) -> String {
    let s = cell["status"].as_str().unwrap_or("");
    let mut out = status_word(lang, s).to_string();
    if let Some(d) = cell["days_late"].as_i64() {
        out += &match (lang, s) {
            (Lang::Zh, "late") => format!("（{d}天）"),
            (Lang::Zh, _) => format!("（已逾期{d}天）"),
            (Lang::En, "late") => format!(" ({d} d)"),
            (Lang::En, _) => format!(" ({d} d overdue)"),
        };
    }
    if let Some(d) = cell["submitted_on"].as_str() {
        out += &format!(" {}", date(lang, d));
    }
    if cell["extended_until"].is_string() {
        out += t(lang, "（已延期）", " (extended)");
    }
    out
}

fn reason_text(lang: Lang, b: &Value, r: &Value) -> String {
    let kind = r["reason"].as_str().unwrap_or("");
    match kind {
        "milestone_missing" => format!(
            "{}{}（{}{}）",
            milestone_title(lang, b, r["milestone"].as_str().unwrap_or("")),
            t(lang, "未提交", " missing"),
            t(lang, "截止", "due "),
            date(lang, r["due"].as_str().unwrap_or(""))
        ),
        "milestone_late" => format!(
            "{}{}{}{}",
            milestone_title(lang, b, r["milestone"].as_str().unwrap_or("")),
            t(lang, "逾期", " late by "),
            r["days_late"].as_i64().unwrap_or(0),
            t(lang, "天", " day(s)")
        ),
        "plan_incomplete" => format!(
            "{}{}",
            t(lang, "实施方案不完整：", "implementation plan incomplete: "),
            plan_problems_text(lang, &r["problems"])
        ),
        "behind_pace" | "far_behind_pace" => format!(
            "{}{}",
            if kind == "behind_pace" {
                t(lang, "进度落后：", "behind pace: ")
            } else {
                t(lang, "进度严重落后：", "far behind pace: ")
            },
            pct(&r["ratio"])
        ),
        "quota_violation" => format!(
            "{}{}",
            t(lang, "推荐超出名额：", "nominations over quota: "),
            r["count"]
        ),
        "source_silent" => format!(
            "{}{}",
            t(lang, "数据源长期未报送：", "silent source: "),
            r["sources"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// Plan problems (as the bulletin JSON carries them) in words.
pub fn plan_problems_text(lang: Lang, problems: &Value) -> String {
    match serde_json::from_value::<Vec<crate::tracking::PlanProblem>>(problems.clone()) {
        Ok(list) => crate::wording::bulletin::plan_problems(lang, &list),
        Err(_) => problems.to_string(),
    }
}

fn reasons(lang: Lang, b: &Value, l: &Value) -> String {
    l["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| reason_text(lang, b, r))
                .collect::<Vec<_>>()
                .join(t(lang, "；", "; "))
        })
        .unwrap_or_default()
}

fn title(lang: Lang, b: &Value) -> String {
    match lang {
        Lang::Zh => b["title"].as_str().unwrap_or("").to_string(),
        Lang::En => b["title_en"].as_str().unwrap_or("").to_string(),
    }
}

fn deliverables(b: &Value) -> Vec<String> {
    b["nation"]["milestones"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The bulletin as Markdown.
pub fn markdown(b: &Value, lang: Lang) -> String {
    let mut s = String::new();
    let n = &b["nation"];
    let _ = writeln!(s, "# {}\n", title(lang, b));
    let _ = writeln!(
        s,
        "{} {} · {} {} · {} {}\n",
        t(lang, "数据截至", "Data as of"),
        date(lang, b["as_of_date"].as_str().unwrap_or("")),
        t(lang, "日志检查点", "log checkpoint"),
        b["checkpoint"]["size"],
        t(lang, "根哈希", "root"),
        b["checkpoint"]["root"].as_str().unwrap_or("")
    );
    let _ = writeln!(s, "## {}\n", t(lang, "全国概况", "National summary"));
    let _ = writeln!(
        s,
        "- {}：{} / {}（{}）",
        t(lang, "新增空间", "New spaces"),
        count(lang, n["new_spaces"].as_i64().unwrap_or(0)),
        count(lang, n["target"]["new_spaces"].as_i64().unwrap_or(0)),
        pct(&json_ratio(
            n["new_spaces"].as_f64(),
            n["target"]["new_spaces"].as_f64()
        ))
    );
    let _ = writeln!(
        s,
        "- {}：{}",
        t(lang, "按计划应达", "Expected by now"),
        count(lang, n["pace"]["expected"].as_i64().unwrap_or(0))
    );
    let _ = writeln!(
        s,
        "- {}：{} · {}：{} · {}：{}",
        t(lang, "教师覆盖率", "Teacher coverage"),
        pct(&n["coverage"]["teachers"]),
        t(lang, "学生覆盖率", "Student coverage"),
        pct(&n["coverage"]["students"]),
        t(lang, "学校覆盖率", "School coverage"),
        pct(&n["coverage"]["schools"])
    );
    let _ = writeln!(
        s,
        "- {}：{}\n",
        t(lang, "实名制比例", "Real-name share"),
        pct(&n["real_name_share"])
    );

    let ids = deliverables(b);
    let _ = writeln!(
        s,
        "## {}\n",
        t(lang, "各省进度排名", "Provincial units ranked")
    );
    let mut header = vec![
        t(lang, "排名", "Rank").to_string(),
        t(lang, "单位", "Unit").to_string(),
        t(lang, "空间总数", "Spaces").to_string(),
        t(lang, "新增", "New").to_string(),
        t(lang, "进度", "Pace").to_string(),
    ];
    header.extend(ids.iter().map(|id| milestone_title(lang, b, id)));
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for p in b["provinces"].as_array().into_iter().flatten() {
        let total: i64 = SpaceKind::ALL
            .iter()
            .filter_map(|k| p["spaces"][k.as_str()].as_i64())
            .sum();
        let mut row = vec![
            p["rank"].to_string(),
            name(lang, p),
            count(lang, total),
            count(lang, p["new_spaces"].as_i64().unwrap_or(0)),
            pct(&p["pace"]["ratio"]),
        ];
        row.extend(ids.iter().map(|id| cell_text(lang, &p["milestones"][id])));
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    let _ = writeln!(s, "\n## {}\n", t(lang, "进度落后单位", "Lagging units"));
    for l in b["lagging"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "- **{}**（{}）：{}",
            name(lang, l),
            l["code"].as_str().unwrap_or(""),
            reasons(lang, b, l)
        );
    }
    let _ = writeln!(s, "\n## {}\n", t(lang, "推荐超额", "Quota violations"));
    for v in b["quota_violations"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "- {}", v["text"].as_str().unwrap_or(""));
    }
    let _ = writeln!(s, "\n## {}\n", t(lang, "实施方案问题", "Plan problems"));
    for v in b["plan_problems"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "- {}：{}",
            v["code"].as_str().unwrap_or(""),
            plan_problems_text(lang, &v["problems"])
        );
    }
    let _ = writeln!(
        s,
        "\n## {}\n",
        t(lang, "长期未报送的数据源", "Silent sources")
    );
    for v in b["silent_sources"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "- {} ({}): {} {}",
            v["source"].as_str().unwrap_or(""),
            v["scope"].as_str().unwrap_or(""),
            v["days_silent"],
            t(lang, "天", "days")
        );
    }
    let _ = writeln!(s, "\n## {}\n", t(lang, "数据标记", "Flagged data"));
    for f in b["flags"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "- {}", f);
    }
    s
}

fn json_ratio(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Value::from(a / b),
        _ => Value::Null,
    }
}

/// The UTF-8 byte-order mark every CSV starts with: without it Excel reads the file in the
/// system code page and shows Chinese names as mojibake.
pub const CSV_BOM: &str = "\u{feff}";

/// Why a CSV could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The `csv` writer refused a row (rows of unequal length: a bug in this module).
    #[error("cannot write the bulletin CSV: {0}; this is a bug in the hub, please report it")]
    Write(#[from] csv::Error),
    /// The writer's buffer could not be taken back.
    #[error("cannot finish the bulletin CSV: {0}; this is a bug in the hub, please report it")]
    Finish(String),
}

/// The province table as CSV (one row per provincial unit), written by the `csv` crate
/// (quoting as RFC 4180 says) after a UTF-8 byte-order mark ([`CSV_BOM`]).
pub fn csv(b: &Value, lang: Lang) -> Result<String, CsvError> {
    let ids = deliverables(b);
    let mut w = csv::Writer::from_writer(CSV_BOM.as_bytes().to_vec());
    let mut header: Vec<String> = ["rank", "code", "name"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    header.extend(SpaceKind::ALL.iter().map(|k| k.as_str().to_string()));
    header.extend(
        [
            "new_spaces",
            "pace_ratio",
            "pace_class",
            "coverage_teachers",
            "coverage_students",
            "coverage_schools",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    header.extend(ids.iter().map(|id| format!("{id}_status")));
    header.extend(ids.iter().map(|id| format!("{id}_days_late")));
    w.write_record(&header)?;
    for p in b["provinces"].as_array().into_iter().flatten() {
        let mut row = vec![
            p["rank"].to_string(),
            p["code"].as_str().unwrap_or("").to_string(),
            name(lang, p),
        ];
        row.extend(SpaceKind::ALL.iter().map(|k| {
            p["spaces"][k.as_str()]
                .as_i64()
                .map(|v| v.to_string())
                .unwrap_or_default()
        }));
        row.push(p["new_spaces"].to_string());
        row.push(
            p["pace"]["ratio"]
                .as_f64()
                .map(|r| format!("{r:.4}"))
                .unwrap_or_default(),
        );
        row.push(p["pace"]["class"].as_str().unwrap_or("").to_string());
        for c in ["teachers", "students", "schools"] {
            row.push(
                p["coverage"][c]
                    .as_f64()
                    .map(|r| format!("{r:.4}"))
                    .unwrap_or_default(),
            );
        }
        row.extend(ids.iter().map(|id| {
            p["milestones"][id]["status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        }));
        row.extend(ids.iter().map(|id| {
            p["milestones"][id]["days_late"]
                .as_i64()
                .map(|d| d.to_string())
                .unwrap_or_default()
        }));
        w.write_record(&row)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| CsvError::Finish(e.error().to_string()))?;
    // Every field is a Rust string, so the bytes are UTF-8.
    String::from_utf8(bytes).map_err(|e| CsvError::Finish(e.to_string()))
}

/// The bulletin as a printable HTML page with inline charts.
pub fn html(b: &Value, lang: Lang) -> String {
    let n = &b["nation"];
    let ids = deliverables(b);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="{lang_attr}"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:"Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",sans-serif;margin:2em;color:#222}}
h1{{font-size:1.5em;border-bottom:3px solid #b22;padding-bottom:.3em}} h2{{font-size:1.15em;margin-top:1.6em}}
table{{border-collapse:collapse;width:100%;font-size:.85em}} th,td{{border:1px solid #ccc;padding:3px 6px;text-align:left}}
th{{background:#f3f3f3}} td.num{{text-align:right;font-variant-numeric:tabular-nums}}
.bar{{background:#eee;height:.8em;width:10em;position:relative}} .bar span{{display:block;height:100%;background:#2a7}}
.bar span.behind{{background:#e90}} .bar span.far_behind{{background:#c33}}
.on_time{{color:#272}} .late{{color:#c60}} .missing{{color:#c00;font-weight:bold}} .due_soon{{color:#a60}}
.meta{{color:#666;font-size:.8em;word-break:break-all}}
@media print{{body{{margin:0}} h2{{page-break-after:avoid}} tr{{page-break-inside:avoid}}}}
</style></head><body>
<h1>{title}</h1>
<p class="meta">{asof} {asof_date} · {cp} {size} · {root_l} {root}</p>
"#,
        lang_attr = t(lang, "zh-CN", "en"),
        title = esc(&title(lang, b)),
        asof = t(lang, "数据截至", "Data as of"),
        asof_date = date(lang, b["as_of_date"].as_str().unwrap_or("")),
        cp = t(lang, "日志检查点", "log checkpoint"),
        size = b["checkpoint"]["size"],
        root_l = t(lang, "根哈希", "root"),
        root = esc(b["checkpoint"]["root"].as_str().unwrap_or("")),
    );
    // National summary with the trajectory chart.
    let new = n["new_spaces"].as_f64().unwrap_or(0.0);
    let target = n["target"]["new_spaces"].as_f64().unwrap_or(1.0).max(1.0);
    let expected = n["pace"]["expected"].as_f64().unwrap_or(0.0);
    let _ = write!(
        s,
        "<h2>{}</h2><table><tr><th>{}</th><td class=\"num\" id=\"nation-new\">{}</td><th>{}</th><td class=\"num\">{}</td><th>{}</th><td class=\"num\">{}</td></tr>\
         <tr><th>{}</th><td class=\"num\">{}</td><th>{}</th><td class=\"num\">{}</td><th>{}</th><td class=\"num\">{}</td></tr></table>",
        t(lang, "全国概况", "National summary"),
        t(lang, "新增空间", "New spaces"),
        count(lang, new as i64),
        t(lang, "目标", "Target"),
        count(lang, target as i64),
        t(lang, "按计划应达", "Expected by now"),
        count(lang, expected as i64),
        t(lang, "教师覆盖率", "Teacher coverage"),
        pct(&n["coverage"]["teachers"]),
        t(lang, "学生覆盖率", "Student coverage"),
        pct(&n["coverage"]["students"]),
        t(lang, "实名制比例", "Real-name share"),
        pct(&n["real_name_share"]),
    );
    s.push_str(&trajectory_svg(lang, &n["trajectory"]));

    let _ = write!(
        s,
        "<h2>{}</h2><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th>",
        t(
            lang,
            "各省进度排名与工作台账",
            "Provincial units ranked, and the work ledger"
        ),
        t(lang, "排名", "Rank"),
        t(lang, "单位", "Unit"),
        t(lang, "新增空间", "New spaces"),
        t(lang, "进度", "Pace"),
        t(lang, "覆盖率（教师/学生）", "Coverage (teachers/students)")
    );
    for id in &ids {
        let _ = write!(s, "<th>{}</th>", esc(&milestone_title(lang, b, id)));
    }
    s.push_str("</tr>");
    for p in b["provinces"].as_array().into_iter().flatten() {
        let ratio = p["pace"]["ratio"].as_f64();
        let width = ratio.map_or(0.0, |r| (r * 100.0).clamp(0.0, 100.0));
        let class = p["pace"]["class"].as_str().unwrap_or("");
        let _ = write!(
            s,
            "<tr data-code=\"{code}\" data-new=\"{raw_new}\" data-pace=\"{raw_pace}\"><td class=\"num\">{rank}</td><td>{name}</td><td class=\"num\">{new}</td>\
             <td><div class=\"bar\" title=\"{pct}\"><span class=\"{class}\" style=\"width:{width:.1}%\"></span></div>{pct}</td><td>{ct} / {cs}</td>",
            code = esc(p["code"].as_str().unwrap_or("")),
            raw_new = p["new_spaces"].as_i64().unwrap_or(0),
            raw_pace = ratio.map_or(String::new(), |r| format!("{r:.6}")),
            rank = p["rank"],
            name = esc(&name(lang, p)),
            new = count(lang, p["new_spaces"].as_i64().unwrap_or(0)),
            pct = ratio.map_or("—".into(), |r| format!("{:.1}%", r * 100.0)),
            ct = pct(&p["coverage"]["teachers"]),
            cs = pct(&p["coverage"]["students"]),
        );
        for id in &ids {
            let cell = &p["milestones"][id];
            let _ = write!(
                s,
                "<td class=\"{}\">{}</td>",
                esc(cell["status"].as_str().unwrap_or("")),
                esc(&cell_text(lang, cell))
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");

    let _ = write!(
        s,
        "<h2>{}</h2><ul>",
        t(lang, "进度落后单位及原因", "Lagging units and why")
    );
    for l in b["lagging"].as_array().into_iter().flatten() {
        let _ = write!(
            s,
            "<li data-code=\"{}\"><b>{}</b>：{}</li>",
            esc(l["code"].as_str().unwrap_or("")),
            esc(&name(lang, l)),
            esc(&reasons(lang, b, l))
        );
    }
    s.push_str("</ul>");
    let list = |s: &mut String, heading: &str, items: Vec<String>| {
        let _ = write!(s, "<h2>{}</h2>", esc(heading));
        if items.is_empty() {
            s.push_str(t(lang, "<p>无</p>", "<p>None</p>"));
        } else {
            s.push_str("<ul>");
            for i in items {
                let _ = write!(s, "<li>{}</li>", esc(&i));
            }
            s.push_str("</ul>");
        }
    };
    list(
        &mut s,
        t(lang, "推荐超额", "Quota violations"),
        b["quota_violations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["text"].as_str().unwrap_or("").to_string())
            .collect(),
    );
    list(
        &mut s,
        t(lang, "实施方案问题", "Plan problems"),
        b["plan_problems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                format!(
                    "{}：{}",
                    v["name"].as_str().unwrap_or(""),
                    plan_problems_text(lang, &v["problems"])
                )
            })
            .collect(),
    );
    list(
        &mut s,
        t(lang, "长期未报送的数据源", "Silent sources"),
        b["silent_sources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                format!(
                    "{} ({}) {} {}",
                    v["source"].as_str().unwrap_or(""),
                    v["scope"].as_str().unwrap_or(""),
                    v["days_silent"],
                    t(lang, "天", "days")
                )
            })
            .collect(),
    );
    list(
        &mut s,
        t(lang, "延期", "Extensions"),
        b["extensions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                format!(
                    "{} {} → {}: {}",
                    v["region"].as_str().unwrap_or(""),
                    milestone_title(lang, b, v["milestone"].as_str().unwrap_or("")),
                    date(lang, v["until"].as_str().unwrap_or("")),
                    v["reason"].as_str().unwrap_or("")
                )
            })
            .collect(),
    );
    list(
        &mut s,
        t(
            lang,
            "数据标记（减少、冲突、不一致）",
            "Flagged data (decreases, conflicts, discrepancies)",
        ),
        b["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| f.to_string())
            .collect(),
    );
    list(
        &mut s,
        t(lang, "通知记录", "Notice log"),
        b["notices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                format!(
                    "#{} {} → {} [{}] {}",
                    v["id"],
                    v["rule"].as_str().unwrap_or(""),
                    v["addressee"].as_str().unwrap_or(""),
                    v["state"].as_str().unwrap_or(""),
                    v[match lang {
                        Lang::Zh => "text",
                        Lang::En => "text_en",
                    }]
                    .as_str()
                    .unwrap_or("")
                )
            })
            .collect(),
    );
    let _ = writeln!(
        s,
        "<p class=\"meta\">{}</p><pre class=\"meta\">{}</pre></body></html>",
        t(
            lang,
            "本通报由中心汇聚服务签名，可用 spacesync-hub bulletin verify 根据日志复核。",
            "This bulletin is signed by the hub and can be re-checked against the log with spacesync-hub bulletin verify."
        ),
        esc(b["checkpoint"]["note"].as_str().unwrap_or(""))
    );
    s
}

fn trajectory_svg(lang: Lang, tr: &Value) -> String {
    let (w, h, pad) = (520.0, 180.0, 30.0);
    let target = tr["target"].as_f64().unwrap_or(1.0).max(1.0);
    let base = tr["baseline"].as_str().unwrap_or("");
    let end = tr["target_date"].as_str().unwrap_or("");
    let today = tr["today"].as_str().unwrap_or("");
    let days = |a: &str, b: &str| -> f64 {
        match (
            chrono::NaiveDate::parse_from_str(a, "%Y-%m-%d"),
            chrono::NaiveDate::parse_from_str(b, "%Y-%m-%d"),
        ) {
            (Ok(a), Ok(b)) => (b - a).num_days() as f64,
            _ => 0.0,
        }
    };
    let span = days(base, end).max(1.0);
    let x_today = (days(base, today) / span).clamp(0.0, 1.2);
    let actual = tr["actual_today"].as_f64().unwrap_or(0.0);
    let expected = tr["expected_today"].as_f64().unwrap_or(0.0);
    let sx = |f: f64| pad + f * (w - 2.0 * pad) / 1.2;
    let sy = |v: f64| h - pad - (v / target).clamp(0.0, 1.3) * (h - 2.0 * pad) / 1.3;
    format!(
        r##"<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{label}">
<line x1="{p}" y1="{yb}" x2="{xe}" y2="{yb}" stroke="#999"/>
<line x1="{p}" y1="{yb}" x2="{xt}" y2="{yt}" stroke="#2a7" stroke-dasharray="4 3"/>
<line x1="{p}" y1="{yb}" x2="{xa}" y2="{ya}" stroke="#b22" stroke-width="2"/>
<circle cx="{xa}" cy="{ya}" r="4" fill="#b22"/><circle cx="{xa}" cy="{ye}" r="3" fill="#2a7"/>
<text x="{xt}" y="{ytl}" font-size="11" text-anchor="end">{tgt_l} {tgt}</text>
<text x="{p}" y="{ybl}" font-size="11">{base}</text><text x="{xt}" y="{ybl}" font-size="11" text-anchor="end">{end}</text>
<text x="{xa}" y="{yal}" font-size="11">{act_l} {act}</text>
</svg>"##,
        label = t(
            lang,
            "全国新增空间进度与计划轨迹",
            "National new spaces against the planned trajectory"
        ),
        p = pad,
        yb = sy(0.0),
        xe = sx(1.2),
        xt = sx(1.0),
        yt = sy(target),
        ytl = sy(target) - 6.0,
        xa = sx(x_today),
        ya = sy(actual),
        ye = sy(expected),
        yal = sy(actual) - 8.0,
        ybl = h - 8.0,
        tgt_l = t(lang, "目标", "target"),
        tgt = count(lang, target as i64),
        act_l = t(lang, "实际", "actual"),
        act = count(lang, actual as i64),
        base = date(lang, base),
        end = date(lang, end),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_dates_read_as_each_language_expects() {
        assert_eq!(group(12_345_678), "12,345,678");
        assert_eq!(group(-1_000), "-1,000");
        assert_eq!(count(Lang::Zh, 12_345_678), "1234.57万");
        assert_eq!(count(Lang::Zh, 9_999), "9,999");
        assert_eq!(count(Lang::En, 12_345_678), "12,345,678");
        assert_eq!(date(Lang::Zh, "2018-11-06"), "2018年11月6日");
        assert_eq!(date(Lang::En, "2018-11-06T01:00:00Z"), "2018-11-06");
    }

    #[test]
    fn csv_opens_with_a_bom_and_hostile_names_round_trip() {
        let hostile = "广东, \"南\"\n部";
        let b = serde_json::json!({
            "nation": { "milestones": { "implementation_plan": {} } },
            "provinces": [{
                "rank": 1, "code": "440000", "name": hostile, "name_en": "Guang\"dong,\r\nX",
                "spaces": {}, "new_spaces": 7, "pace": { "ratio": 0.5, "class": "behind" },
                "coverage": {},
                "milestones": { "implementation_plan": { "status": "missing", "days_late": 3 } },
            }],
        });
        for (lang, want) in [(Lang::Zh, hostile), (Lang::En, "Guang\"dong,\r\nX")] {
            let out = csv(&b, lang).unwrap();
            assert!(out.as_bytes().starts_with(&[0xEF, 0xBB, 0xBF]), "{out:?}");
            let body = out.strip_prefix(CSV_BOM).unwrap();
            let mut r = ::csv::Reader::from_reader(body.as_bytes());
            let header = r.headers().unwrap().clone();
            assert_eq!(&header[2], "name");
            let rows: Vec<::csv::StringRecord> = r.records().map(Result::unwrap).collect();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].len(), header.len());
            assert_eq!(&rows[0][1], "440000");
            assert_eq!(&rows[0][2], want);
            let at = |h: &str| header.iter().position(|x| x == h).unwrap();
            assert_eq!(&rows[0][at("implementation_plan_status")], "missing");
            assert_eq!(&rows[0][at("implementation_plan_days_late")], "3");
        }
    }
}
