//! The words of bulletins (HTML and Markdown) and of the notices that quote them: section
//! headings, column labels, the sentence an empty section says, milestone states, lagging
//! reasons, plan problems, quota violations, the data-flag summary.
//!
//! Fixed words are fields of [`Words`], one value per language ([`words`]), so a label
//! missing in one language does not compile. Sentences with figures in them are the
//! functions below. Names from data (units, regions, sources, milestone titles, reasons
//! given for extensions) are passed in and never translated here. Space kinds, notice
//! rules and notice states are the dashboard's words ([`space_kind`], [`notice_rule`],
//! [`notice_state`]), so one thing has one name wherever people read it.

use spacesync_shared::campaign::NomineeType;
use spacesync_shared::region::Level;
use spacesync_shared::wire::PlanProblem;

pub use super::dashboard::{kind as space_kind, notice_state, rule as notice_rule};
use super::{Lang, count, date, group};
use crate::assessment::{MilestoneCell, MilestoneStatus, Reason, WitnessStatus};

/// A bulletin's fixed words in one language.
#[derive(Debug)]
pub struct Words {
    /// The `lang` attribute of the page.
    pub html_lang: &'static str,
    /// Before the data date.
    pub data_as_of: &'static str,
    /// Before the log size.
    pub log_checkpoint: &'static str,
    /// Before the root hash.
    pub root: &'static str,

    // National summary.
    /// Heading.
    pub national_summary: &'static str,
    /// New spaces since the baseline.
    pub new_spaces: &'static str,
    /// The target.
    pub target: &'static str,
    /// New spaces expected by now on the planned line.
    pub expected_by_now: &'static str,
    /// Teacher coverage.
    pub teacher_coverage: &'static str,
    /// Student coverage.
    pub student_coverage: &'static str,
    /// School coverage.
    pub school_coverage: &'static str,
    /// Real-name share.
    pub real_name_share: &'static str,

    // Trajectory.
    /// The chart's accessible name.
    pub chart_label: &'static str,
    /// The chart's legend: the reached figures.
    pub chart_actual: &'static str,
    /// The chart's legend: the planned straight line.
    pub chart_planned: &'static str,
    /// Heading of the table of every bulletin's national figures.
    pub history: &'static str,
    /// Column: bulletin number.
    pub number: &'static str,
    /// Column: data date.
    pub as_of: &'static str,
    /// Column: share of the expected figure reached.
    pub of_expected: &'static str,
    /// Marks this bulletin's row.
    pub this_bulletin: &'static str,

    // Provincial units.
    /// Heading of the ranking.
    pub ranked: &'static str,
    /// Column: rank.
    pub rank: &'static str,
    /// Column: unit.
    pub unit: &'static str,
    /// Column: all spaces.
    pub spaces: &'static str,
    /// Column: pace.
    pub pace: &'static str,
    /// Column: coverage, teachers / students.
    pub coverage_ts: &'static str,
    /// No unit in the bulletin.
    pub no_units: &'static str,

    // Lists.
    /// Heading: lagging units.
    pub lagging: &'static str,
    /// No lagging unit.
    pub no_lagging: &'static str,
    /// Heading: quota violations.
    pub quota_violations: &'static str,
    /// No quota violation.
    pub no_quota_violations: &'static str,
    /// Heading: plan problems.
    pub plan_problems: &'static str,
    /// No plan problem.
    pub no_plan_problems: &'static str,
    /// Heading: silent sources.
    pub silent_sources: &'static str,
    /// No silent source.
    pub no_silent_sources: &'static str,
    /// Heading: deadline extensions.
    pub extensions: &'static str,
    /// No extension.
    pub no_extensions: &'static str,

    // Data flags.
    /// Heading.
    pub flags: &'static str,
    /// No flag.
    pub no_flags: &'static str,
    /// Column: code.
    pub code: &'static str,
    /// Column: decreases.
    pub flag_decrease: &'static str,
    /// Column: same-day conflicts.
    pub flag_conflict: &'static str,
    /// Column: totals differing from their parts.
    pub flag_discrepancy: &'static str,
    /// Column and row: all flags.
    pub total: &'static str,
    /// Column: region.
    pub region: &'static str,
    /// Column: school.
    pub school: &'static str,
    /// Column: space kind.
    pub kind: &'static str,
    /// Column: the earlier figure.
    pub before: &'static str,
    /// Column: the later figure.
    pub after: &'static str,
    /// Column: the drop.
    pub drop: &'static str,
    /// Column: source.
    pub source: &'static str,
    /// Flags but no decrease.
    pub no_drops: &'static str,

    // Notices.
    /// Heading.
    pub notices: &'static str,
    /// No notice.
    pub no_notices: &'static str,
    /// Column: notice id.
    pub notice_id: &'static str,
    /// Column: the rule.
    pub rule: &'static str,
    /// Column: addressee.
    pub addressee: &'static str,
    /// Column: delivery state.
    pub state: &'static str,
    /// Column: the text.
    pub text: &'static str,
    /// A notice record that does not read as one.
    pub unreadable_notice: &'static str,

    /// The closing note on the signature.
    pub signed: &'static str,
    /// Title of the page shown for a document that is not a bulletin.
    pub unreadable: &'static str,
    /// An unknown figure.
    pub unknown: &'static str,
}

static ZH: Words = Words {
    html_lang: "zh-CN",
    data_as_of: "数据截至",
    log_checkpoint: "日志检查点",
    root: "根哈希",
    national_summary: "全国概况",
    new_spaces: "新增空间",
    target: "目标",
    expected_by_now: "按计划应达",
    teacher_coverage: "教师覆盖率",
    student_coverage: "学生覆盖率",
    school_coverage: "学校覆盖率",
    real_name_share: "实名制比例",
    chart_label: "全国新增空间进度与计划轨迹（每期通报一个点）",
    chart_actual: "实际",
    chart_planned: "计划",
    history: "历次通报的全国进度",
    number: "期次",
    as_of: "数据截至",
    of_expected: "完成计划",
    this_bulletin: "（本期）",
    ranked: "各省进度排名与工作台账",
    rank: "排名",
    unit: "单位",
    spaces: "空间总数",
    pace: "进度",
    coverage_ts: "覆盖率（教师/学生）",
    no_units: "各省进度：无数据。",
    lagging: "进度落后单位及原因",
    no_lagging: "进度落后单位：无。",
    quota_violations: "推荐超额",
    no_quota_violations: "推荐超额：无。",
    plan_problems: "实施方案问题",
    no_plan_problems: "实施方案问题：无。",
    silent_sources: "长期未报送的数据源",
    no_silent_sources: "长期未报送的数据源：无。",
    extensions: "延期",
    no_extensions: "延期：无。",
    flags: "数据标记（减少、冲突、不一致）",
    no_flags: "数据标记：无。",
    code: "代码",
    flag_decrease: "数量减少",
    flag_conflict: "多源同日报送",
    flag_discrepancy: "合计不一致",
    total: "合计",
    region: "区划",
    school: "学校",
    kind: "空间类型",
    before: "此前",
    after: "此后",
    drop: "减少",
    source: "数据源",
    no_drops: "数量减少：无。",
    notices: "通知记录",
    no_notices: "通知记录：无。",
    notice_id: "编号",
    rule: "类别",
    addressee: "发往",
    state: "状态",
    text: "内容",
    unreadable_notice: "（此条通知记录无法读取）",
    signed: "本通报由中心汇聚服务签名，可用 spacesync-hub bulletin verify 根据日志复核。",
    unreadable: "无法显示通报",
    unknown: "—",
};

static EN: Words = Words {
    html_lang: "en",
    data_as_of: "Data as of",
    log_checkpoint: "log checkpoint",
    root: "root",
    national_summary: "National summary",
    new_spaces: "New spaces",
    target: "Target",
    expected_by_now: "Expected by now",
    teacher_coverage: "Teacher coverage",
    student_coverage: "Student coverage",
    school_coverage: "School coverage",
    real_name_share: "Real-name share",
    chart_label: "National new spaces against the planned trajectory (one point per bulletin)",
    chart_actual: "actual",
    chart_planned: "planned",
    history: "National progress, bulletin by bulletin",
    number: "No.",
    as_of: "Data as of",
    of_expected: "Of expected",
    this_bulletin: " (this bulletin)",
    ranked: "Provincial units ranked, and the work ledger",
    rank: "Rank",
    unit: "Unit",
    spaces: "Spaces",
    pace: "Pace",
    coverage_ts: "Coverage (teachers/students)",
    no_units: "No provincial unit has figures.",
    lagging: "Lagging units and why",
    no_lagging: "No lagging units.",
    quota_violations: "Quota violations",
    no_quota_violations: "No nominations over quota.",
    plan_problems: "Plan problems",
    no_plan_problems: "No plan problems.",
    silent_sources: "Silent sources",
    no_silent_sources: "No silent sources.",
    extensions: "Deadline extensions",
    no_extensions: "No deadline extensions.",
    flags: "Flagged data (decreases, conflicts, discrepancies)",
    no_flags: "No flagged data.",
    code: "Code",
    flag_decrease: "Decreases",
    flag_conflict: "Same-day reports from several sources",
    flag_discrepancy: "Totals differing from their parts",
    total: "Total",
    region: "Region",
    school: "School",
    kind: "Space kind",
    before: "Before",
    after: "After",
    drop: "Drop",
    source: "Source",
    no_drops: "No decreases.",
    notices: "Notice log",
    no_notices: "No notices.",
    notice_id: "No.",
    rule: "Rule",
    addressee: "To",
    state: "State",
    text: "Text",
    unreadable_notice: "(this notice record cannot be read)",
    signed: "This bulletin is signed by the hub and can be re-checked against the log with spacesync-hub bulletin verify.",
    unreadable: "This bulletin cannot be shown",
    unknown: "—",
};

/// The fixed words in `lang`.
pub fn words(lang: Lang) -> &'static Words {
    match lang {
        Lang::Zh => &ZH,
        Lang::En => &EN,
    }
}

/// A ratio as a percentage with one decimal, or a dash when unknown.
pub fn percent(r: Option<f64>) -> String {
    r.map_or("—".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// A milestone state.
pub fn status(lang: Lang, s: MilestoneStatus) -> &'static str {
    let (zh, en) = match s {
        MilestoneStatus::NotDue => ("未到期", "not due"),
        MilestoneStatus::DueSoon => ("即将到期", "due soon"),
        MilestoneStatus::OnTime => ("按时", "on time"),
        MilestoneStatus::Late => ("逾期提交", "late"),
        MilestoneStatus::Missing => ("未提交", "missing"),
    };
    super::t(lang, zh, en)
}

/// One cell of the milestone matrix: the state, how late, when received, extended.
pub fn cell(lang: Lang, c: &MilestoneCell) -> String {
    let mut out = status(lang, c.status).to_string();
    if let Some(d) = c.days_late {
        out += &match (lang, c.status) {
            (Lang::Zh, MilestoneStatus::Late) => format!("（{d}天）"),
            (Lang::Zh, _) => format!("（已逾期{d}天）"),
            (Lang::En, MilestoneStatus::Late) => format!(" ({d} d)"),
            (Lang::En, _) => format!(" ({d} d overdue)"),
        };
    }
    if let Some(d) = c.submitted_on {
        out += " ";
        out += &date(lang, &d.to_string());
    }
    if c.extended_until.is_some() {
        out += super::t(lang, "（已延期）", " (extended)");
    }
    out
}

/// One reason a unit is named in the lagging list; `title` names a milestone by its id.
pub fn reason(lang: Lang, r: &Reason, title: &dyn Fn(&str) -> String) -> String {
    match (r, lang) {
        (Reason::MilestoneMissing { milestone, due, .. }, Lang::Zh) => format!(
            "{}未提交（截止{}）",
            title(milestone),
            date(lang, &due.to_string())
        ),
        (Reason::MilestoneMissing { milestone, due, .. }, Lang::En) => {
            format!("{} missing (due {due})", title(milestone))
        }
        (
            Reason::MilestoneLate {
                milestone,
                days_late,
                ..
            },
            Lang::Zh,
        ) => format!("{}逾期{}天", title(milestone), days_late.unwrap_or(0)),
        (
            Reason::MilestoneLate {
                milestone,
                days_late,
                ..
            },
            Lang::En,
        ) => format!(
            "{} late by {} day(s)",
            title(milestone),
            days_late.unwrap_or(0)
        ),
        (Reason::PlanIncomplete { problems, .. }, Lang::Zh) => {
            format!("实施方案不完整：{}", plan_problems(lang, problems))
        }
        (Reason::PlanIncomplete { problems, .. }, Lang::En) => format!(
            "implementation plan incomplete: {}",
            plan_problems(lang, problems)
        ),
        (Reason::BehindPace(p), Lang::Zh) => format!("进度落后：{}", percent(p.ratio)),
        (Reason::BehindPace(p), Lang::En) => format!("behind pace: {}", percent(p.ratio)),
        (Reason::FarBehindPace(p), Lang::Zh) => format!("进度严重落后：{}", percent(p.ratio)),
        (Reason::FarBehindPace(p), Lang::En) => {
            format!("far behind pace: {}", percent(p.ratio))
        }
        (Reason::QuotaViolation { count }, Lang::Zh) => format!("推荐超出名额：{count}"),
        (Reason::QuotaViolation { count }, Lang::En) => {
            format!("nominations over quota: {count}")
        }
        (Reason::SourceSilent { sources }, _) => {
            let ids = sources
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            match lang {
                Lang::Zh => format!("数据源长期未报送：{ids}"),
                Lang::En => format!("silent source: {ids}"),
            }
        }
    }
}

/// Several reasons in one sentence, joined as the language joins clauses.
pub fn reasons(lang: Lang, rs: &[Reason], title: &dyn Fn(&str) -> String) -> String {
    rs.iter()
        .map(|r| reason(lang, r, title))
        .collect::<Vec<_>>()
        .join(super::t(lang, "；", "; "))
}

/// One plan problem in words.
pub fn plan_problem(lang: Lang, p: &PlanProblem) -> String {
    match (p, lang) {
        (PlanProblem::Years { covered, min, max }, Lang::Zh) => {
            format!("方案覆盖{covered}年，应为{min}—{max}年")
        }
        (PlanProblem::Years { covered, min, max }, Lang::En) => {
            format!("plan covers {covered} year(s); it must cover {min}–{max}")
        }
        (PlanProblem::Regions { year, regions, min }, Lang::Zh) => {
            format!("{year}年纳入{regions}个区域，每年应不少于{min}个")
        }
        (PlanProblem::Regions { year, regions, min }, Lang::En) => {
            format!("{year}: {regions} region(s) enter the rollout; at least {min} are required")
        }
    }
}

/// Several plan problems in one sentence, joined as the language joins clauses.
pub fn plan_problems(lang: Lang, problems: &[PlanProblem]) -> String {
    let sep = match lang {
        Lang::Zh => "；",
        Lang::En => "; ",
    };
    problems
        .iter()
        .map(|p| plan_problem(lang, p))
        .collect::<Vec<_>>()
        .join(sep)
}

/// A unit and its plan problems.
pub fn plan_item(lang: Lang, unit: &str, problems: &[PlanProblem]) -> String {
    match lang {
        Lang::Zh => format!("{unit}：{}", plan_problems(lang, problems)),
        Lang::En => format!("{unit}: {}", plan_problems(lang, problems)),
    }
}

/// What a quota violation is about, for [`quota_violation`].
#[derive(Debug, Clone, Copy)]
pub struct QuotaFacts<'a> {
    /// The recommender's name.
    pub by: &'a str,
    /// The recommender's level.
    pub level: Level,
    /// Schools or regions.
    pub nominee_type: NomineeType,
    /// The quota.
    pub limit: u32,
    /// Nominees already counted.
    pub counted: &'a [String],
    /// The nominee refused.
    pub nominee: &'a str,
}

/// A nomination over quota.
pub fn quota_violation(lang: Lang, q: QuotaFacts) -> String {
    let n = q.counted.len();
    match lang {
        Lang::Zh => {
            let level = match q.level {
                Level::Province => "省级单位",
                Level::City => "地市",
                Level::County => "区县",
            };
            let kind = match q.nominee_type {
                NomineeType::School => "学校",
                NomineeType::Region => "区域",
            };
            format!(
                "{}推荐{kind}超出名额：每个{level}最多推荐{}个，已推荐{n}个（{}），{}未计入。",
                q.by,
                q.limit,
                q.counted.join("、"),
                q.nominee
            )
        }
        Lang::En => format!(
            "{} nominated over its quota: a {} recommends at most {} {}; it had already nominated {n} ({}), so {} is not counted.",
            q.by,
            q.level,
            q.limit,
            match q.nominee_type {
                NomineeType::School => "schools",
                NomineeType::Region => "regions",
            },
            q.counted.join(", "),
            q.nominee
        ),
    }
}

/// A source silent too long.
pub fn silent_source(lang: Lang, source: &str, scope: &str, days: i64) -> String {
    match lang {
        Lang::Zh => format!("{source}（{scope}）：已{days}天未报送"),
        Lang::En => format!("{source} ({scope}): silent for {days} days"),
    }
}

/// A deadline extension.
pub fn extension(lang: Lang, region: &str, milestone: &str, until: &str, why: &str) -> String {
    match lang {
        Lang::Zh => format!("{region}“{milestone}”延期至{until}：{why}"),
        Lang::En => format!("{region}, \"{milestone}\", extended until {until}: {why}"),
    }
}

/// The first line of the flags section: how many, and how they are shown.
pub fn flags_summary(lang: Lang, total: usize) -> String {
    let total = group(total as i64);
    match lang {
        Lang::Zh => {
            format!("共{total}条数据标记。下表按省级单位和类型计数，并列出减少最多的记录。")
        }
        Lang::En => format!(
            "{total} flags in all, counted below by provincial unit and kind, with the largest drops."
        ),
    }
}

/// Where the complete list of flags is: the companion CSV and the JSON.
pub fn flags_elsewhere(lang: Lang, number: u64, total: usize) -> String {
    let total = group(total as i64);
    match lang {
        Lang::Zh => format!(
            "完整列表（{total}条，每条一行）见本期的数据标记 CSV 文件：GET /v1/bulletins/{number}/flags.csv，或 spacesync-hub bulletin show {number} --format flags-csv；通报 JSON 原文也载有全部数据标记。"
        ),
        Lang::En => format!(
            "The complete list ({total} flags, one per row) is this bulletin's flags CSV: GET /v1/bulletins/{number}/flags.csv, or spacesync-hub bulletin show {number} --format flags-csv; the bulletin's JSON holds every flag too."
        ),
    }
}

/// Heading of the largest drops, `n` of them.
pub fn largest_drops(lang: Lang, n: usize) -> String {
    match lang {
        Lang::Zh => format!("减少最多的{n}项"),
        Lang::En => format!("The {n} largest drops"),
    }
}

/// A figure and the date it was reported for.
pub fn figure_on(lang: Lang, n: u64, on: &str) -> String {
    let n = count(lang, i64::try_from(n).unwrap_or(i64::MAX));
    match lang {
        Lang::Zh => format!("{n}（{}）", date(lang, on)),
        Lang::En => format!("{n} ({on})"),
    }
}

/// A point of the trajectory chart, as its tooltip says it.
pub fn chart_point(lang: Lang, number: u64, on: &str, new: i64) -> String {
    let new = count(lang, new);
    match lang {
        Lang::Zh => format!("第{number}期（{}）：新增空间{new}", date(lang, on)),
        Lang::En => format!("No. {number} ({on}): {new} new spaces"),
    }
}

/// The checkpoint line under the title.
pub fn meta(lang: Lang, as_of: &str, size: u64, root: &str) -> String {
    let w = words(lang);
    format!(
        "{} {} · {} {size} · {} {root}",
        w.data_as_of,
        date(lang, as_of),
        w.log_checkpoint,
        w.root
    )
}

/// Whether the bulletin's log checkpoint is witnessed: "witnessed by k of n (quorum q)",
/// or, in words, that it is not yet.
pub fn witnessed(lang: Lang, w: &WitnessStatus) -> String {
    let (k, n, q) = (w.units.len(), w.of, w.quorum);
    match (lang, w.reached()) {
        (Lang::Zh, true) => format!("日志检查点已由{n}个省级单位中的{k}个见证联署（法定数{q}）"),
        (Lang::Zh, false) => {
            format!("日志检查点尚未经见证：{n}个省级单位中已有{k}个联署，未达法定数{q}")
        }
        (Lang::En, true) => {
            format!("Log checkpoint witnessed by {k} of {n} provincial units (quorum {q})")
        }
        (Lang::En, false) => format!(
            "Log checkpoint not yet witnessed: {k} of {n} provincial units have cosigned it, short of the quorum of {q}"
        ),
    }
}

/// Between a name and what is said about it: "北京市：…", "Beijing: …".
pub fn colon(lang: Lang) -> &'static str {
    super::t(lang, "：", ": ")
}

/// A name with a note after it: "北京市（110000）", "Beijing (110000)".
pub fn parenthesised(lang: Lang, name: &str, code: &str) -> String {
    match lang {
        Lang::Zh => format!("{name}（{code}）"),
        Lang::En => format!("{name} ({code})"),
    }
}

/// What the page says when the document is not a bulletin this hub can read.
pub fn unreadable(lang: Lang, error: &str) -> String {
    match lang {
        Lang::Zh => format!(
            "该通报文件无法读取：{error}。文件本身未改动；可用 spacesync-hub bulletin show <期次> --format json 查看原文，并请报告此问题。"
        ),
        Lang::En => format!(
            "The bulletin document cannot be read: {error}. The document itself is unchanged; see it with spacesync-hub bulletin show <number> --format json, and please report this."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_problems_read_in_both_languages() {
        let p = PlanProblem::Regions {
            year: 2019,
            regions: 2,
            min: 3,
        };
        assert_eq!(
            plan_problem(Lang::En, &p),
            "2019: 2 region(s) enter the rollout; at least 3 are required"
        );
        assert_eq!(
            plan_problem(Lang::Zh, &p),
            "2019年纳入2个区域，每年应不少于3个"
        );
        let y = PlanProblem::Years {
            covered: 1,
            min: 2,
            max: 3,
        };
        assert_eq!(
            plan_problems(Lang::Zh, &[y, p]),
            "方案覆盖1年，应为2—3年；2019年纳入2个区域，每年应不少于3个"
        );
    }

    #[test]
    fn empty_sections_say_so_in_a_sentence() {
        for lang in [Lang::Zh, Lang::En] {
            let w = words(lang);
            for s in [
                w.no_lagging,
                w.no_quota_violations,
                w.no_plan_problems,
                w.no_silent_sources,
                w.no_extensions,
                w.no_flags,
                w.no_drops,
                w.no_notices,
                w.no_units,
            ] {
                assert!(s.ends_with('。') || s.ends_with('.'), "{s}");
            }
        }
        assert_eq!(
            words(Lang::Zh).no_silent_sources,
            "长期未报送的数据源：无。"
        );
        assert_eq!(words(Lang::En).no_silent_sources, "No silent sources.");
    }
}
