//! The words of notices to lagging regions. Each function gives the Chinese and the
//! English text of one rule's notice from the facts the rule found; the facts themselves
//! travel beside the text (`NoticeFacts`), so programs never parse these sentences.

use chrono::NaiveDate;

use super::{Lang, date};

/// Chinese and English text of one notice.
pub type Texts = (String, String);

/// Names of the unit a notice is about, in both languages.
#[derive(Debug, Clone, Copy)]
pub struct Unit<'a> {
    /// Chinese name.
    pub zh: &'a str,
    /// English name.
    pub en: &'a str,
}

/// A deliverable named in a notice, in both languages.
#[derive(Debug, Clone, Copy)]
pub struct Deliverable<'a> {
    /// Chinese title.
    pub zh: &'a str,
    /// English title.
    pub en: &'a str,
}

/// A deliverable due soon and not submitted.
pub fn reminder(u: Unit, d: Deliverable, due: NaiveDate, left: i64) -> Texts {
    let due_zh = date(Lang::Zh, &due.to_string());
    (
        format!(
            "【截止提醒】{}：“{}”将于{due_zh}截止（还有{left}天），目前尚未提交。请在截止日前通过本省平台报送。",
            u.zh, d.zh
        ),
        format!(
            "[Reminder] {}: \"{}\" is due on {due} ({left} day(s) left) and has not been submitted. Submit it through your provincial platform before the deadline.",
            u.en, d.en
        ),
    )
}

/// A deliverable past its deadline.
pub fn overdue(
    u: Unit,
    d: Deliverable,
    due: NaiveDate,
    overdue: i64,
    escalate_after: u32,
) -> Texts {
    let due_zh = date(Lang::Zh, &due.to_string());
    (
        format!(
            "【逾期通知】{}：“{}”已于{due_zh}截止，至今未提交（已逾期{overdue}天）。请立即报送；逾期{escalate_after}天仍未报送将上报教育部。",
            u.zh, d.zh
        ),
        format!(
            "[Overdue] {}: \"{}\" was due on {due} and has not been submitted ({overdue} day(s) overdue). Submit it now; after {escalate_after} days it is escalated to the ministry.",
            u.en, d.en
        ),
    )
}

/// A deliverable overdue long enough to go to the level above.
pub fn escalated(u: Unit, d: Deliverable, due: NaiveDate, overdue: i64) -> Texts {
    let due_zh = date(Lang::Zh, &due.to_string());
    (
        format!(
            "【上报通知】{}：“{}”逾期{overdue}天仍未提交（截止{due_zh}），已上报教育部。请立即报送并说明原因。",
            u.zh, d.zh
        ),
        format!(
            "[Escalated] {}: \"{}\" is {overdue} day(s) overdue (due {due}) and has been reported to the ministry. Submit it now and explain the delay.",
            u.en, d.en
        ),
    )
}

/// New spaces behind the expected trajectory.
pub fn behind_pace(u: Unit, actual: i64, expected: u64, percent: f64, by: NaiveDate) -> Texts {
    (
        format!(
            "【进度预警】{}：新增空间{actual}个，按计划此时应达{expected}个（完成{percent:.1}%）。请加快空间开通，确保{}前完成目标。",
            u.zh,
            date(Lang::Zh, &by.to_string())
        ),
        format!(
            "[Behind pace] {}: {actual} new spaces against {expected} expected by now ({percent:.1}%). Speed up opening spaces to reach the target by {by}.",
            u.en
        ),
    )
}

/// A nomination over its recommender's quota.
pub fn quota_exceeded(u: Unit, by: &str, nominee: &str, limit: u32, counted: usize) -> Texts {
    (
        format!(
            "【名额超限】{}：{by}推荐的{nominee}超出名额（上限{limit}，已计{counted}个）。请撤回多余推荐（withdrawal）。",
            u.zh
        ),
        format!(
            "[Quota exceeded] {}: the nomination of {nominee} by {by} is over its quota of {limit} ({counted} already counted). Withdraw the extra nominations.",
            u.en
        ),
    )
}

/// An implementation plan that breaks the plan rules; `problems` in each language.
pub fn plan_incomplete(u: Unit, problems_zh: &str, problems_en: &str) -> Texts {
    (
        format!(
            "【方案不完整】{}：实施方案不符合要求（{problems_zh}）。请修改后重新报送。",
            u.zh
        ),
        format!(
            "[Plan incomplete] {}: the implementation plan does not meet the rules ({problems_en}). Revise and resubmit it.",
            u.en
        ),
    )
}

/// A source that has sent nothing for too long.
pub fn source_silent(u: Unit, source: &str, days: i64) -> Texts {
    (
        format!(
            "【数据源中断】{}：数据源{source}已{days}天未向中心报送数据。请检查本省代理（spacesync-agent status）与网络。",
            u.zh
        ),
        format!(
            "[Source silent] {}: source {source} has sent nothing for {days} days. Check the provincial agent (`spacesync-agent status`) and its network.",
            u.en
        ),
    )
}
