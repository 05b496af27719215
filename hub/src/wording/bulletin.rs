//! The words of bulletins and of the notices that quote them: plan problems, lagging
//! reasons, milestone states.

use spacesync_shared::wire::PlanProblem;

use super::Lang;

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
}
