//! Every sentence and label of the ministry dashboard, in Chinese and English.
//!
//! Fixed words are fields of [`Words`], one value per language ([`words`]), so a label
//! missing in one language does not compile. Sentences with figures in them are the
//! functions below. Names from data (regions, schools, sources) are passed in and never
//! translated here.

use spacesync_shared::record::SpaceKind;
use spacesync_shared::region::Level;

use super::Lang;

/// The dashboard's fixed words in one language.
#[derive(Debug)]
pub struct Words {
    // The page frame.
    /// The `lang` attribute of pages.
    pub html_lang: &'static str,
    /// After every page title.
    pub campaign: &'static str,
    /// The site's name in the header.
    pub site: &'static str,
    /// Navigation: the overview.
    pub nav_progress: &'static str,
    /// Navigation: the notice log.
    pub nav_notices: &'static str,
    /// Navigation: source health.
    pub nav_sources: &'static str,
    /// The language switch, naming the other language.
    pub other_language: &'static str,
    /// The logout button.
    pub log_out: &'static str,
    /// The link under an error message.
    pub back_to_overview: &'static str,

    // Error pages.
    /// Title of a 403 page.
    pub forbidden: &'static str,
    /// Title of a 404 page.
    pub not_found: &'static str,
    /// Title of a 503 page.
    pub unavailable: &'static str,
    /// Text of a 503 page.
    pub unavailable_text: &'static str,
    /// Title of the page for an unknown bearer token.
    pub unknown_token: &'static str,
    /// Text of the page for an unknown bearer token.
    pub unknown_token_text: &'static str,

    // Roles.
    /// The admin role.
    pub role_admin: &'static str,
    /// The ministry role.
    pub role_ministry: &'static str,

    // Login.
    /// Title and button of the login form.
    pub log_in: &'static str,
    /// The token field.
    pub access_token: &'static str,
    /// Under the login form.
    pub login_help: &'static str,
    /// A login with an unknown token.
    pub login_unknown_token: &'static str,
    /// Title of a refused cross-site login.
    pub cross_site_login: &'static str,
    /// Text of a refused cross-site login.
    pub cross_site_login_text: &'static str,
    /// Title of a refused cross-site logout.
    pub cross_site_request: &'static str,
    /// Text of a refused cross-site logout.
    pub cross_site_logout_text: &'static str,

    // The overview.
    /// Heading of the overview for the ministry and admins.
    pub national_progress: &'static str,
    /// Live figures heading.
    pub live_progress: &'static str,
    /// Before a time.
    pub as_of: &'static str,
    /// After the log size.
    pub log_entries: &'static str,
    /// Heading of the table of provincial units.
    pub provincial_units: &'static str,
    /// First column of that table.
    pub unit: &'static str,

    // The bulletin box.
    /// Its heading.
    pub latest_bulletin: &'static str,
    /// When none was issued.
    pub no_bulletin: &'static str,
    /// Before the bulletin's data date.
    pub data_as_of: &'static str,
    /// Before the bulletin's issue date.
    pub issued: &'static str,
    /// The nation (caption, breadcrumb).
    pub nation: &'static str,
    /// The bulletin's target.
    pub target: &'static str,
    /// Expected new spaces at the bulletin's date.
    pub expected_by_then: &'static str,
    /// Units behind plan.
    pub lagging_units: &'static str,
    /// A province's rank.
    pub rank: &'static str,
    /// A province's pace, capitalised.
    pub against_plan_title: &'static str,
    /// Before the API links.
    pub api_links: &'static str,

    // Figures.
    /// All spaces.
    pub spaces_total: &'static str,
    /// New spaces since the baseline.
    pub new_spaces: &'static str,
    /// The target of new spaces.
    pub target_new: &'static str,
    /// Expected new spaces today.
    pub expected_by_now: &'static str,
    /// Share of the target reached.
    pub of_target: &'static str,
    /// Share of the plan reached.
    pub against_plan: &'static str,
    /// Teacher coverage.
    pub cov_teachers: &'static str,
    /// Student coverage.
    pub cov_students: &'static str,
    /// School coverage.
    pub cov_schools: &'static str,
    /// Real-name share.
    pub real_name_share: &'static str,
    /// Teacher population.
    pub teachers: &'static str,
    /// Student population.
    pub students: &'static str,
    /// School population.
    pub schools_count: &'static str,
    /// Heading of the per-kind table.
    pub spaces_by_kind: &'static str,
    /// Its first column.
    pub kind: &'static str,
    /// Spaces of a kind.
    pub spaces: &'static str,
    /// Real-name spaces of a kind.
    pub real_name: &'static str,
    /// Baseline of a kind.
    pub baseline: &'static str,
    /// New spaces of a kind.
    pub new: &'static str,
    /// An empty per-kind table.
    pub no_kinds: &'static str,
    /// First column of region and school tables.
    pub code: &'static str,

    // Regions.
    /// A city's children.
    pub cities: &'static str,
    /// A county's children.
    pub counties: &'static str,
    /// No child has data.
    pub no_child_data: &'static str,
    /// Column of a child region.
    pub division: &'static str,
    /// A region without data.
    pub no_region_data: &'static str,
    /// Heading of the schools table.
    pub schools: &'static str,
    /// No school figures.
    pub no_school_data: &'static str,
    /// Column of a school.
    pub school_code: &'static str,

    // Data flags.
    /// Heading of the flags section.
    pub flags: &'static str,
    /// No flags.
    pub no_flags: &'static str,
    /// Column: decreases.
    pub flag_decrease: &'static str,
    /// Column: same-day reports from several sources.
    pub flag_conflict: &'static str,
    /// Column: a total that differs from its parts.
    pub flag_discrepancy: &'static str,
    /// Column: all flags.
    pub total: &'static str,
    /// No decreases.
    pub no_drops: &'static str,
    /// Column: the region.
    pub region: &'static str,
    /// Column: the school.
    pub school: &'static str,
    /// Column: before.
    pub before: &'static str,
    /// Column: after.
    pub after: &'static str,
    /// Column: the drop.
    pub drop: &'static str,
    /// Column: the source.
    pub source: &'static str,
    /// The link to the CSV of every flag.
    pub flags_csv: &'static str,

    // Notices.
    /// Title of the notice log.
    pub notice_log: &'static str,
    /// No notices.
    pub no_notices: &'static str,
    /// Column: when raised.
    pub raised: &'static str,
    /// Column: the rule.
    pub rule: &'static str,
    /// Column: the subject.
    pub about: &'static str,
    /// Column: the addressee.
    pub to: &'static str,
    /// Column: the deadline.
    pub deadline: &'static str,
    /// Column: the delivery state.
    pub state: &'static str,
    /// Column: the text.
    pub text: &'static str,
    /// After an escalated addressee.
    pub escalated: &'static str,

    // Sources.
    /// Title of source health.
    pub source_health: &'static str,
    /// No sources.
    pub no_sources: &'static str,
    /// Column: scope.
    pub scope: &'static str,
    /// Column: status.
    pub status: &'static str,
    /// Column: held seq.
    pub held_through: &'static str,
    /// Column: entries.
    pub entries: &'static str,
    /// Column: last seen.
    pub last_seen: &'static str,
    /// Column: lag.
    pub lag: &'static str,
    /// Column: the largest log checkpoint the source's agent cosigned.
    pub witnessed: &'static str,
    /// Column and heading: alarms.
    pub alarms: &'static str,
    /// Status: silent.
    pub silent: &'static str,
    /// Status: active.
    pub active: &'static str,
    /// Status: revoked.
    pub revoked: &'static str,
    /// No alarms.
    pub no_alarms: &'static str,
    /// Column: when.
    pub at: &'static str,
    /// Column: seq.
    pub seq: &'static str,
    /// Column: alarm code.
    pub alarm_code: &'static str,
    /// Column: detail.
    pub detail: &'static str,
}

/// The dashboard's words in `lang`.
pub fn words(lang: Lang) -> &'static Words {
    match lang {
        Lang::Zh => &ZH,
        Lang::En => &EN,
    }
}

static ZH: Words = Words {
    html_lang: "zh-CN",
    campaign: "网络学习空间应用普及活动",
    site: "网络学习空间应用普及活动 · 工作看板",
    nav_progress: "进度总览",
    nav_notices: "通知记录",
    nav_sources: "数据源状态",
    other_language: "English",
    log_out: "退出",
    back_to_overview: "返回总览",
    forbidden: "无权访问",
    not_found: "未找到",
    unavailable: "暂时无法显示",
    unavailable_text: "服务暂时无法完成请求，请稍后重试（详情见服务日志）。",
    unknown_token: "令牌无效",
    unknown_token_text: "请求所带的 Authorization: Bearer 令牌不存在。",
    role_admin: "管理员",
    role_ministry: "教育部",
    log_in: "登录",
    access_token: "访问令牌",
    login_help: "令牌由中心管理员用 spacesync-hub token create --role … 生成。登录后会话保持12小时；令牌本身不会保存在浏览器中。",
    login_unknown_token: "令牌无效，请检查后重试。",
    cross_site_login: "拒绝跨站登录",
    cross_site_login_text: "登录表单必须从本站提交。",
    cross_site_request: "拒绝跨站请求",
    cross_site_logout_text: "退出请求必须从本站提交。",
    national_progress: "全国工作进度",
    live_progress: "实时进度",
    as_of: "截至",
    log_entries: "日志条目",
    provincial_units: "省级单位",
    unit: "单位",
    latest_bulletin: "最新进度通报",
    no_bulletin: "尚未发布进度通报。",
    data_as_of: "数据截至",
    issued: "发布于",
    nation: "全国",
    target: "目标",
    expected_by_then: "按计划应达",
    lagging_units: "进度落后单位",
    rank: "排名",
    against_plan_title: "相对计划进度",
    api_links: "接口（需 Bearer 令牌）：",
    spaces_total: "空间总数",
    new_spaces: "新增空间",
    target_new: "新增目标",
    expected_by_now: "按计划应达",
    of_target: "完成目标",
    against_plan: "相对计划进度",
    cov_teachers: "教师覆盖率",
    cov_students: "学生覆盖率",
    cov_schools: "学校覆盖率",
    real_name_share: "实名制比例",
    teachers: "教师数",
    students: "学生数",
    schools_count: "学校数",
    spaces_by_kind: "分类空间",
    kind: "空间类型",
    spaces: "空间数",
    real_name: "其中实名",
    baseline: "基线",
    new: "新增",
    no_kinds: "暂无分类空间数据。",
    code: "代码",
    cities: "地市",
    counties: "区县",
    no_child_data: "下级区划暂无数据。",
    division: "区划",
    no_region_data: "该区划暂无数据。",
    schools: "学校",
    no_school_data: "暂无按学校报送的数据。",
    school_code: "学校标识码",
    flags: "数据标记（减少、冲突、不一致）",
    no_flags: "无数据标记。",
    flag_decrease: "数量减少",
    flag_conflict: "多源同日报送",
    flag_discrepancy: "合计不一致",
    total: "合计",
    no_drops: "无数量减少的记录。",
    region: "区划",
    school: "学校",
    before: "之前",
    after: "之后",
    drop: "减少",
    source: "数据源",
    flags_csv: "全部数据标记（CSV）",
    notice_log: "通知记录",
    no_notices: "暂无通知。",
    raised: "时间",
    rule: "规则",
    about: "涉及",
    to: "发送给",
    deadline: "截止",
    state: "状态",
    text: "内容",
    escalated: "（已上报）",
    source_health: "数据源状态",
    no_sources: "没有登记的数据源。",
    scope: "范围",
    status: "状态",
    held_through: "已收序号",
    entries: "条目",
    last_seen: "最近接收",
    lag: "距今",
    witnessed: "已见证检查点",
    alarms: "告警",
    silent: "长期未报送",
    active: "正常",
    revoked: "已吊销",
    no_alarms: "无告警。",
    at: "时间",
    seq: "序号",
    alarm_code: "类型",
    detail: "说明",
};

static EN: Words = Words {
    html_lang: "en",
    campaign: "Learning spaces campaign",
    site: "Learning spaces campaign · Dashboard",
    nav_progress: "Progress",
    nav_notices: "Notices",
    nav_sources: "Sources",
    other_language: "中文",
    log_out: "Log out",
    back_to_overview: "Back to the overview",
    forbidden: "Forbidden",
    not_found: "Not found",
    unavailable: "Temporarily unavailable",
    unavailable_text: "The hub could not complete the request; retry later (details are in the hub's log).",
    unknown_token: "Unknown token",
    unknown_token_text: "The Authorization: Bearer token is not known to this hub.",
    role_admin: "admin",
    role_ministry: "ministry",
    log_in: "Log in",
    access_token: "Access token",
    login_help: "Tokens are made by the hub's admin with spacesync-hub token create --role …. A login lasts 12 hours; the token itself is not kept in the browser.",
    login_unknown_token: "Unknown token; check it and try again.",
    cross_site_login: "Cross-site login refused",
    cross_site_login_text: "The login form must be sent from this site.",
    cross_site_request: "Cross-site request refused",
    cross_site_logout_text: "The logout must be sent from this site.",
    national_progress: "National progress",
    live_progress: "Live progress",
    as_of: "As of",
    log_entries: "log entries",
    provincial_units: "Provincial units",
    unit: "Unit",
    latest_bulletin: "Latest bulletin",
    no_bulletin: "No bulletin has been issued yet.",
    data_as_of: "data as of",
    issued: "issued",
    nation: "Nation",
    target: "Target",
    expected_by_then: "Expected by then",
    lagging_units: "Lagging units",
    rank: "Rank",
    against_plan_title: "Against plan",
    api_links: "API (bearer token):",
    spaces_total: "Spaces",
    new_spaces: "New spaces",
    target_new: "Target (new)",
    expected_by_now: "Expected by now",
    of_target: "Of target",
    against_plan: "against plan",
    cov_teachers: "Teacher coverage",
    cov_students: "Student coverage",
    cov_schools: "School coverage",
    real_name_share: "Real-name share",
    teachers: "Teachers",
    students: "Students",
    schools_count: "Schools",
    spaces_by_kind: "Spaces by kind",
    kind: "Kind",
    spaces: "Spaces",
    real_name: "Real-name",
    baseline: "Baseline",
    new: "New",
    no_kinds: "No spaces reported by kind yet.",
    code: "Code",
    cities: "Cities",
    counties: "Counties",
    no_child_data: "No data from the divisions below yet.",
    division: "Division",
    no_region_data: "No data for this region yet.",
    schools: "Schools",
    no_school_data: "No figures reported per school.",
    school_code: "School code",
    flags: "Flagged data (decreases, conflicts, discrepancies)",
    no_flags: "No flagged data.",
    flag_decrease: "Decreases",
    flag_conflict: "Same-day reports from several sources",
    flag_discrepancy: "Totals differing from their parts",
    total: "Total",
    no_drops: "No decreases.",
    region: "Region",
    school: "School",
    before: "Before",
    after: "After",
    drop: "Drop",
    source: "Source",
    flags_csv: "Every flag (CSV)",
    notice_log: "Notice log",
    no_notices: "No notices.",
    raised: "Raised",
    rule: "Rule",
    about: "About",
    to: "To",
    deadline: "Deadline",
    state: "State",
    text: "Text",
    escalated: " (escalated)",
    source_health: "Source health",
    no_sources: "No registered sources.",
    scope: "Scope",
    status: "Status",
    held_through: "Held through seq",
    entries: "Entries",
    last_seen: "Last seen",
    lag: "Lag",
    witnessed: "Witnessed checkpoint",
    alarms: "Alarms",
    silent: "silent",
    active: "active",
    revoked: "revoked",
    no_alarms: "No alarms.",
    at: "At",
    seq: "Seq",
    alarm_code: "Code",
    detail: "Detail",
};

/// A space kind.
pub fn kind(lang: Lang, k: SpaceKind) -> &'static str {
    let (zh, en) = match k {
        SpaceKind::Teacher => ("教师个人空间", "Teacher"),
        SpaceKind::Student => ("学生个人空间", "Student"),
        SpaceKind::Parent => ("家长个人空间", "Parent"),
        SpaceKind::MasterTeacher => ("名师个人空间", "Master teacher"),
        SpaceKind::School => ("学校机构空间", "School"),
        SpaceKind::Region => ("区域机构空间", "Region"),
        SpaceKind::Class => ("班级机构空间", "Class"),
        SpaceKind::Club => ("社团机构空间", "Club"),
    };
    super::t(lang, zh, en)
}

/// A level of the division hierarchy.
pub fn level(lang: Lang, l: Level) -> &'static str {
    let (zh, en) = match l {
        Level::Province => ("省级单位", "Provincial unit"),
        Level::City => ("地市", "City"),
        Level::County => ("区县", "County"),
    };
    super::t(lang, zh, en)
}

/// A notice rule, by its id; an unknown id as itself.
pub fn rule(lang: Lang, rule: &str) -> String {
    let (zh, en) = match rule {
        "milestone_due_7d" => ("7天内到期提醒", "due within 7 days"),
        "milestone_due_3d" => ("3天内到期提醒", "due within 3 days"),
        "milestone_overdue" => ("逾期未交", "overdue"),
        "milestone_escalated" => ("逾期上报", "escalated"),
        "behind_pace" => ("进度落后", "behind pace"),
        "quota_violation" => ("推荐超额", "over quota"),
        "plan_incomplete" => ("实施方案不完整", "plan incomplete"),
        "source_silent" => ("数据源未报送", "silent source"),
        other => return other.to_string(),
    };
    super::t(lang, zh, en).to_string()
}

/// A notice's delivery state, by its id; an unknown id as itself.
pub fn notice_state(lang: Lang, state: &str) -> String {
    let (zh, en) = match state {
        "pending" => ("待送达", "pending"),
        "delivered" => ("已送达", "delivered"),
        "acknowledged" => ("已确认", "acknowledged"),
        other => return other.to_string(),
    };
    super::t(lang, zh, en).to_string()
}

/// The overview's heading for a province reader.
pub fn unit_progress(lang: Lang, unit: &str) -> String {
    match lang {
        Lang::Zh => format!("{unit}工作进度"),
        Lang::En => format!("{unit}: progress"),
    }
}

/// After the bulletin links, when more than one was issued.
pub fn bulletins_issued(lang: Lang, n: usize) -> String {
    match lang {
        Lang::Zh => format!("共{n}期"),
        Lang::En => format!("{n} issued"),
    }
}

/// Listed divisions below a region that have sent nothing.
pub fn more_divisions_without_data(lang: Lang, n: usize) -> String {
    match lang {
        Lang::Zh => format!("另有{n}个下级区划暂无数据。"),
        Lang::En => format!("{n} more listed divisions have no data yet."),
    }
}

/// A school page's title.
pub fn school_title(lang: Lang, school: &str) -> String {
    match lang {
        Lang::Zh => format!("学校 {school}"),
        Lang::En => format!("School {school}"),
    }
}

/// A bulletin page's name.
pub fn bulletin_name(lang: Lang, n: &str) -> String {
    match lang {
        Lang::Zh => format!("第{n}期通报"),
        Lang::En => format!("Bulletin {n}"),
    }
}

/// A region named in a "not found" sentence.
pub fn region_subject(lang: Lang, code: &str) -> String {
    match lang {
        Lang::Zh => format!("区划 {code}"),
        Lang::En => format!("Region {code}"),
    }
}

/// A region named in a "may not read" sentence.
pub fn region_object(lang: Lang, code: &str) -> String {
    match lang {
        Lang::Zh => format!("区划 {code}"),
        Lang::En => format!("region {code}"),
    }
}

/// A school named in an error sentence.
pub fn school_subject(lang: Lang, school: &str, region: &str) -> String {
    match lang {
        Lang::Zh => format!("学校 {school}（区划 {region}）"),
        Lang::En => format!("School {school} (region {region})"),
    }
}

/// A 403 page's sentence.
pub fn may_not_read(lang: Lang, role: &str, what: &str) -> String {
    match lang {
        Lang::Zh => format!("当前身份（{role}）无权查看{what}。"),
        Lang::En => format!("Your role ({role}) may not read {what}."),
    }
}

/// A 404 page's sentence.
pub fn was_not_found(lang: Lang, what: &str) -> String {
    match lang {
        Lang::Zh => format!("找不到{what}。"),
        Lang::En => format!("{what} was not found."),
    }
}

/// A source whose agent cosigned a tree the hub does not hold: "saw another tree of N
/// entries" (its agent's log alarm says more).
pub fn saw_another_tree(lang: Lang, size: u64) -> String {
    match lang {
        Lang::Zh => format!("曾联署规模为{size}的另一棵日志树"),
        Lang::En => format!("cosigned another tree of {size} entries"),
    }
}

/// A source whose agent reports a log alarm: its audit of the hub's log failed (`code`:
/// `fork`, `rollback`, …; the agent's text is shown beside it).
pub fn log_alarm(lang: Lang, code: &str) -> String {
    match lang {
        Lang::Zh => format!("日志审计告警：{code}"),
        Lang::En => format!("log alarm: {code}"),
    }
}

/// Time since a source was last heard from.
pub fn lag(lang: Lang, secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match lang {
        Lang::Zh if secs < 60 => "不到1分钟".into(),
        Lang::En if secs < 60 => "under a minute".into(),
        Lang::Zh if d > 0 => format!("{d}天{h}小时"),
        Lang::En if d > 0 => format!("{d} d {h} h"),
        Lang::Zh if h > 0 => format!("{h}小时{m}分"),
        Lang::En if h > 0 => format!("{h} h {m} min"),
        Lang::Zh => format!("{m}分钟"),
        Lang::En => format!("{m} min"),
    }
}

/// How many flags there are, what the table counts them by, and where the rest are.
pub fn flags_summary(lang: Lang, total: &str, by: Level) -> String {
    match lang {
        Lang::Zh => format!(
            "共{total}条数据标记，下表按{}和类型计数，并列出减少最多的记录；完整列表：",
            level(lang, by)
        ),
        Lang::En => {
            let by = match by {
                Level::Province => "provincial unit",
                Level::City => "city",
                Level::County => "county",
            };
            format!(
                "{total} flags in all, counted below by {by} and kind, with the largest drops; the complete list:"
            )
        }
    }
}

/// Heading of the largest drops, `n` of them.
pub fn largest_drops(lang: Lang, n: usize) -> String {
    match lang {
        Lang::Zh => format!("减少最多的{n}项"),
        Lang::En => format!("The {n} largest drops"),
    }
}
